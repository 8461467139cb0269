package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/tidwall/redcon"
)

// commandReader reads a client's commands with redcon's parser. Its buffers
// (about 8 KiB) are only held while the client has a command on the way: an
// idle connection waits for its next byte without them, which is most of
// what 10,000 idle clients would otherwise cost.
type commandReader struct {
	conn  io.Reader
	limit limitReader
	first [1]byte
	rd    *pooledReader

	pending int  // bytes fed to the parser and not yet returned as commands
	inline  bool // an inline command was read: pending cannot be known
}

type pooledReader struct {
	feed feed
	rd   *redcon.Reader
}

// feed is what a pooled redcon.Reader reads from: the byte that woke the
// session, then the client connection.
type feed struct {
	first []byte
	in    io.Reader
	n     int // bytes returned, for the current burst
}

func (f *feed) Read(p []byte) (int, error) {
	if len(f.first) > 0 {
		n := copy(p, f.first)
		f.first = f.first[n:]
		f.n += n
		return n, nil
	}
	n, err := f.in.Read(p)
	f.n += n
	return n, err
}

var readerPool = sync.Pool{New: func() any {
	r := new(pooledReader)
	r.rd = redcon.NewReader(&r.feed)
	return r
}}

// largeBurst is the burst size past which a reader's grown buffers are
// dropped rather than pooled.
const largeBurst = 64 << 10

func newCommandReader(conn io.Reader, maxRequestBytes int) *commandReader {
	c := &commandReader{conn: conn}
	c.limit = limitReader{r: conn, max: maxRequestBytes}
	return c
}

// read returns the next burst of pipelined commands.
func (c *commandReader) read() ([]redcon.Command, error) {
	c.limit.n = 0
	if c.rd == nil {
		// Wait for the client's next byte before taking buffers.
		n, err := c.conn.Read(c.first[:])
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			c.limit.err = err
			return nil, err
		}
		c.limit.n = n
		c.rd = readerPool.Get().(*pooledReader)
		c.rd.feed = feed{first: c.first[:n], in: &c.limit}
	}
	c.rd.feed.n = 0
	cmds, err := c.rd.rd.ReadCommands()
	if err != nil {
		return nil, err
	}
	c.pending += c.rd.feed.n
	for _, cmd := range cmds {
		if !isRESP(cmd) {
			c.inline = true
		}
		c.pending -= len(cmd.Raw)
	}
	return cmds, nil
}

// release returns the parser's buffers to the pool when they hold nothing:
// every byte fed to it came back as a command. Call it after a burst has
// been handled (the commands' memory is the parser's).
func (c *commandReader) release() {
	if c.rd == nil || c.pending != 0 || c.inline {
		return
	}
	if c.rd.feed.n <= largeBurst {
		c.rd.feed = feed{}
		readerPool.Put(c.rd)
	}
	c.rd = nil
}

// isRESP reports whether a command arrived as a RESP array, whose Raw is
// exactly the bytes read; redcon turns an inline command into a new RESP Raw
// and copies its arguments.
func isRESP(cmd redcon.Command) bool {
	raw := cmd.Raw
	if len(cmd.Args) == 0 || len(cmd.Args[0]) == 0 {
		return false
	}
	i := bytes.IndexByte(raw, '\n')
	if i < 0 {
		return false
	}
	j := bytes.IndexByte(raw[i+1:], '\n')
	if j < 0 || i+j+2 >= len(raw) {
		return false
	}
	return &raw[i+j+2] == &cmd.Args[0][0]
}

var errRequestTooLarge = errors.New("request larger than listen.max_request_bytes")

// limitReader bounds the bytes read for one burst of commands, so a client
// cannot make the proxy buffer an endless request.
type limitReader struct {
	r   io.Reader
	n   int
	max int
	err error // the first error the connection returned
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n >= l.max {
		l.err = errRequestTooLarge
		return 0, l.err
	}
	if len(p) > l.max-l.n {
		p = p[:l.max-l.n]
	}
	n, err := l.r.Read(p)
	l.n += n
	if err != nil && l.err == nil {
		l.err = err
	}
	return n, err
}
