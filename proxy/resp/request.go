package resp

import (
	"errors"
	"io"
	"math"
	"sync"

	"github.com/tidwall/redcon"
)

// The request parser follows Redis 7.0's networking.c (processInlineBuffer,
// processMultibulkBuffer), sds.c (sdssplitargs) and util.c (string2ll), so
// that the proxy accepts, ignores and refuses exactly what Redis would.
//
// Redis decides some limits after each read(2), so its verdict on a line
// longer than 64 KiB can depend on how the bytes arrived. The parser takes the
// verdict Redis gives when every byte arrives on its own, so its own verdict
// never depends on how the client's bytes were split.

const (
	// maxLine is PROTO_INLINE_MAX_SIZE: the most bytes Redis buffers while
	// looking for the end of an inline request or of a "*" or "$" header.
	maxLine = 64 << 10
	// maxMultibulk is INT_MAX, the largest "*" count Redis accepts.
	maxMultibulk = math.MaxInt32
	// minBulkBytes is the size of the smallest bulk argument, "$0\r\n\r\n".
	minBulkBytes = 6
	// readSize is the size of a pooled buffer and the least a read asks for
	// when the buffer has to grow.
	readSize = 16 << 10
	// maxPooled is the largest buffer Release keeps for reuse.
	maxPooled = 64 << 10
	// maxPooledArgs bounds the argument and request slices Release keeps.
	maxPooledArgs = 4096
	// maxZeroReads is how many empty reads in a row Read accepts from the
	// underlying reader before giving up with io.ErrNoProgress.
	maxZeroReads = 100
)

// Request is one parsed client request.
type Request struct {
	// Args are the arguments; for a multibulk request they alias the reader's buffer.
	Args [][]byte
	// Raw is the bytes to forward to Redis: for a multibulk request exactly
	// the bytes received; for an inline request a multibulk encoding of Args.
	Raw []byte
}

// ProtocolError is a request Redis would refuse. Error() is Redis's text, such
// as "Protocol error: invalid bulk length"; the client must get "-ERR "+text
// and be closed, as Redis does.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return e.Msg }

var (
	// ErrRequestTooLarge means an incomplete request would need more than the
	// reader's limit (listen.max_request_bytes) buffered.
	ErrRequestTooLarge = errors.New("request larger than listen.max_request_bytes")
	// ErrBufferFull is returned by Fill when the limit is already buffered; it
	// is not fatal: Read makes room.
	ErrBufferFull = errors.New("request buffer full")
)

// reqPhase is where the parser stands in the request at the buffer's start.
type reqPhase uint8

const (
	reqStart      reqPhase = iota // at the first byte of a request
	reqInline                     // looking for the '\n' that ends an inline request
	reqCount                      // looking for the '\r' that ends "*<count>"
	reqBulkHeader                 // looking for the '\r' that ends "$<length>"
	reqBulkBody                   // waiting for a bulk body and the 2 bytes after it
)

// span locates an argument relative to the start of its request.
type span struct{ lo, hi int }

// buffers is the memory a reader holds only while it has bytes to parse or
// requests out; Release pools it, so an idle client costs none of it.
type buffers struct {
	data    []byte    // the bytes read; the current request starts at RequestReader.start
	reqs    []Request // the requests of the last Read
	args    [][]byte  // their arguments
	spans   []span    // arguments of the request being parsed
	inline  []byte    // Raw encodings (and Args) of the last Read's inline requests
	scratch []byte    // an inline request's arguments while they are split
}

var buffersPool = sync.Pool{New: func() any { return new(buffers) }}

// forget drops the last Read's requests, so that they pin no old buffer.
func (b *buffers) forget() {
	clear(b.reqs)
	clear(b.args)
	b.reqs, b.args, b.inline = b.reqs[:0], b.args[:0], b.inline[:0]
}

// RequestReader parses client requests by Redis's rules, without copying
// multibulk arguments. Read, Fill and Release must not run concurrently; the
// requests of the last Read may be used while Fill runs.
type RequestReader struct {
	rd      io.Reader
	limit   int
	maxBulk int64
	first   [1]byte  // what an idle reader reads into, before it takes buffers
	b       *buffers // nil while idle
	start   int      // where the first unconsumed request starts in b.data

	// The position inside the partial request at start.
	phase reqPhase
	left  int   // bulk arguments still to come
	bulk  int64 // the current bulk's length
	off   int   // bytes of the request parsed
	scan  int   // bytes of the current line searched, from the line's start

	err     error // sticky *ProtocolError or ErrRequestTooLarge
	readErr error // sticky error of the underlying reader
}

// NewRequestReader reads requests from r. limit (listen.max_request_bytes,
// at least 1) bounds the bytes buffered; maxBulk is Redis's proto-max-bulk-len
// (512<<20 by default).
func NewRequestReader(r io.Reader, limit int, maxBulk int64) *RequestReader {
	return &RequestReader{rd: r, limit: max(limit, 1), maxBulk: maxBulk}
}

// Read blocks until at least one complete request is buffered, or an error.
// It returns every complete request now buffered, in order; they stay valid
// until the next Read or Release. Requests Redis ignores (*0, *-1, an empty
// inline line) are skipped. On a protocol error it returns the complete
// requests before the bad one together with a *ProtocolError, and every later
// Read returns the error alone; ErrRequestTooLarge behaves the same way. An
// error of the underlying reader (io.EOF) comes with the requests completed
// before it, and is returned again by every later Read, except a timeout (an
// expired read deadline), after which Read may be called again.
func (r *RequestReader) Read() ([]Request, error) {
	if r.b != nil {
		r.b.forget()
		r.compact()
	}
	if r.err != nil {
		return nil, r.err
	}
	for zeroReads := 0; ; {
		if r.b != nil {
			if err := r.parse(); err != nil {
				r.err = err
				return r.requests(), err
			}
			if len(r.b.reqs) > 0 {
				return r.b.reqs, r.readErr
			}
			if len(r.b.data)-r.start >= r.limit {
				r.err = ErrRequestTooLarge
				return nil, r.err
			}
			if len(r.b.data) == r.start {
				r.release() // wait for the next request without buffers
			}
		}
		if r.readErr != nil {
			return nil, r.readErr
		}
		n, timeout := r.readMore()
		switch {
		case n > 0:
			zeroReads = 0
		case timeout != nil:
			return nil, timeout
		case r.readErr == nil:
			if zeroReads++; zeroReads >= maxZeroReads {
				r.readErr = io.ErrNoProgress
			}
		}
	}
}

func (r *RequestReader) requests() []Request {
	if r.b == nil || len(r.b.reqs) == 0 {
		return nil
	}
	return r.b.reqs
}

// Fill reads once from the underlying reader and appends what arrives to the
// buffer without parsing it; the next Read parses it. It never invalidates the
// requests of the last Read: to grow, it copies the unconsumed bytes into a new
// array. It returns ErrBufferFull without reading when the limit is already
// buffered, and the reader's error (io.EOF) once the reader returned one; a
// timeout (an expired read deadline) is returned but not remembered.
func (r *RequestReader) Fill() error {
	if r.err != nil {
		return r.err
	}
	if r.readErr != nil {
		return r.readErr
	}
	if r.b != nil && len(r.b.data)-r.start >= r.limit {
		return ErrBufferFull
	}
	if _, timeout := r.readMore(); timeout != nil {
		return timeout
	}
	return r.readErr
}

// BufferCap is the capacity of the reader's request buffer (0 when it holds
// none): how much memory the client's requests cost right now.
func (r *RequestReader) BufferCap() int {
	if r.b == nil {
		return 0
	}
	return cap(r.b.data)
}

// Release returns the reader's buffers to a pool when no unconsumed byte is
// buffered, so an idle client holds none; the requests of the last Read are
// then invalid. Call it once they have been handled. It is a no-op while a
// partial request is buffered.
func (r *RequestReader) Release() {
	if r.b != nil && len(r.b.data) == r.start {
		r.release()
	}
}

func (r *RequestReader) release() {
	b := r.b
	r.b, r.start = nil, 0
	b.forget()
	b.data = b.data[:0]
	if cap(b.data) > maxPooled {
		b.data = nil
	}
	if cap(b.inline) > maxPooled {
		b.inline = nil
	}
	if cap(b.scratch) > maxPooled {
		b.scratch = nil
	}
	if cap(b.args) > maxPooledArgs || cap(b.spans) > maxPooledArgs || cap(b.reqs) > maxPooledArgs {
		b.args, b.spans, b.reqs = nil, nil, nil
	}
	buffersPool.Put(b)
}

// compact moves the unconsumed bytes to the front of the buffer, and trades a
// buffer grown for a large request for a small one once that request is done.
func (r *RequestReader) compact() {
	b := r.b
	rest := b.data[r.start:]
	switch {
	case cap(b.data) > maxPooled && max(len(rest), r.needed()) <= readSize:
		b.data = append(make([]byte, 0, readSize), rest...)
	case r.start > 0:
		b.data = b.data[:copy(b.data, rest)]
	}
	r.start = 0
}

// needed returns how many bytes, from start, the partial request needs before
// it can progress, or 0 if that is not known.
func (r *RequestReader) needed() int {
	if r.phase != reqBulkBody {
		return 0
	}
	return r.off + int(r.bulk) + 2
}

// readMore reads once into the buffer, growing it first if it is full or too
// small for the bulk being received. It returns the bytes read and a timeout
// of the underlying reader; its other errors are kept in readErr. An idle
// reader reads one byte before it takes buffers.
func (r *RequestReader) readMore() (int, error) {
	if r.b == nil {
		n, err := r.rd.Read(r.first[:])
		if n > 0 {
			r.b = buffersPool.Get().(*buffers)
			if r.b.data == nil {
				r.b.data = make([]byte, 0, readSize)
			}
			r.b.data = append(r.b.data, r.first[0])
		}
		return n, r.noteErr(err)
	}
	b := r.b
	need := r.needed()
	if len(b.data) == cap(b.data) || need > cap(b.data)-r.start {
		// Grow to what the bulk being received needs (with room for a few
		// small arguments after it), or geometrically when the size of the
		// request is not known yet; never past the limit.
		buffered := len(b.data) - r.start
		size := buffered + max(readSize, buffered/4)
		if need > 0 {
			size = max(size, need+readSize)
		}
		size = min(size, r.limit)
		grown := make([]byte, buffered, size)
		copy(grown, b.data[r.start:])
		b.data, r.start = grown, 0
	}
	end := min(cap(b.data), r.start+r.limit)
	n, err := r.rd.Read(b.data[len(b.data):end])
	b.data = b.data[:len(b.data)+n]
	return n, r.noteErr(err)
}

// noteErr remembers the underlying reader's error, except a timeout, which
// it returns: a read deadline that expired (the session stopping a Fill, say)
// does not end the stream, and the next call reads again.
func (r *RequestReader) noteErr(err error) (timeout error) {
	if err == nil || isTimeout(err) {
		return err
	}
	if r.readErr == nil {
		r.readErr = err
	}
	return nil
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// parse appends the complete requests buffered from start to b.reqs,
// resuming where the last call stopped.
func (r *RequestReader) parse() error {
	data := r.b.data
	for r.start < len(data) {
		p := data[r.start:]
		switch r.phase {
		case reqStart:
			r.phase, r.off, r.scan = reqInline, 0, 0
			if p[0] == '*' {
				r.phase = reqCount
			}
			r.b.spans = r.b.spans[:0]
		case reqInline:
			nl := r.lineEnd(p, '\n')
			if nl < 0 {
				return tooBig(p, "Protocol error: too big inline request")
			}
			line := p[:nl]
			if nl > 0 && line[nl-1] == '\r' {
				line = line[:nl-1]
			}
			if !r.appendInline(line) {
				return &ProtocolError{"Protocol error: unbalanced quotes in request"}
			}
			r.next(nl + 1)
		case reqCount:
			cr := r.lineEnd(p, '\r')
			if cr < 0 {
				return tooBig(p, "Protocol error: too big mbulk count string")
			}
			if cr+2 > len(p) {
				return nil // Redis skips the byte after '\r' unseen, but needs it
			}
			n, valid := ParseInt(p[1:cr])
			if !valid || n > maxMultibulk {
				return &ProtocolError{"Protocol error: invalid multibulk length"}
			}
			if n <= 0 {
				r.next(cr + 2) // Redis ignores the request
				continue
			}
			r.phase, r.left, r.off, r.scan = reqBulkHeader, int(n), cr+2, 0
			if int64(r.off)+minBulkBytes*n > int64(r.limit) {
				return ErrRequestTooLarge
			}
		case reqBulkHeader:
			line := p[r.off:]
			cr := r.lineEnd(line, '\r')
			if cr < 0 {
				return tooBig(line, "Protocol error: too big bulk count string")
			}
			if cr+2 > len(line) {
				return nil
			}
			if line[0] != '$' {
				return expectedDollar(line[0])
			}
			n, valid := ParseInt(line[1:cr])
			if !valid || n < 0 || n > r.maxBulk {
				return &ProtocolError{"Protocol error: invalid bulk length"}
			}
			r.phase, r.bulk, r.off = reqBulkBody, n, r.off+cr+2
			if n > int64(r.limit)-int64(r.off)-2-minBulkBytes*int64(r.left-1) {
				return ErrRequestTooLarge
			}
		case reqBulkBody:
			if int64(len(p)-r.off)-2 < r.bulk {
				return nil
			}
			end := r.off + int(r.bulk)
			r.b.spans = append(r.b.spans, span{r.off, end})
			// Redis skips the 2 bytes after the body without looking at them.
			r.phase, r.off, r.scan = reqBulkHeader, end+2, 0
			if r.left--; r.left == 0 {
				r.appendMultibulk(p[:r.off])
				r.next(r.off)
			}
		}
	}
	return nil
}

// next consumes the n bytes of the request at start.
func (r *RequestReader) next(n int) {
	r.start += n
	r.phase = reqStart
}

// After returns what the client sent after req, a request of the last Read:
// the requests parsed after it (an inline one as its multibulk encoding;
// ignored ones left out) followed by the bytes not parsed yet. It is for a
// session that stops parsing at req and passes the rest on unread (a
// replication stream).
func (r *RequestReader) After(req Request) []byte {
	if r.b == nil {
		return nil
	}
	var out []byte
	found := false
	for _, q := range r.b.reqs {
		if found {
			out = append(out, q.Raw...)
		}
		found = found || &q.Raw[0] == &req.Raw[0]
	}
	return append(out, r.b.data[r.start:]...)
}

// lineEnd returns the index of the first delim in line, or -1 if there is
// none yet. It searches like Redis's strchr: a NUL byte ends the search, and
// Redis gives up on a line once more than maxLine bytes have arrived without
// delim (see tooBig). It remembers how far it searched, so that a long line
// arriving in pieces is searched once.
func (r *RequestReader) lineEnd(line []byte, delim byte) int {
	window := line[:min(len(line), maxLine+1)]
	// Lines are short: one pass over the bytes beats two IndexByte calls.
	for i := r.scan; i < len(window); i++ {
		switch window[i] {
		case delim:
			r.scan = i // a later call, waiting for the byte after delim, finds it at once
			return i
		case 0:
			r.scan = i // the search stops here for good
			return -1
		}
	}
	r.scan = len(window)
	return -1
}

// tooBig returns, for a line whose end has not been found, nil (more bytes
// are needed) or, when Redis would give up on it, the protocol error msg.
func tooBig(line []byte, msg string) error {
	if len(line) <= maxLine {
		return nil
	}
	return &ProtocolError{msg}
}

func expectedDollar(c byte) error {
	if c == '\r' || c == '\n' {
		c = ' ' // Redis blanks CR and LF in error replies
	}
	return &ProtocolError{"Protocol error: expected '$', got '" + string([]byte{c}) + "'"}
}

// appendMultibulk adds the complete multibulk request raw, whose arguments
// are b.spans.
func (r *RequestReader) appendMultibulk(raw []byte) {
	b := r.b
	first := len(b.args)
	for _, s := range b.spans {
		b.args = append(b.args, raw[s.lo:s.hi:s.hi])
	}
	b.reqs = append(b.reqs, Request{Args: b.args[first:len(b.args):len(b.args)], Raw: raw[:len(raw):len(raw)]})
}

// appendInline splits an inline request like Redis and adds it, encoded as
// a multibulk request, unless it has no arguments. It reports false if the
// quotes in line are unbalanced.
func (r *RequestReader) appendInline(line []byte) bool {
	b := r.b
	var ok bool
	b.scratch, b.spans, ok = splitInline(b.scratch[:0], b.spans[:0], line)
	if !ok || len(b.spans) == 0 {
		return ok
	}
	start := len(b.inline)
	b.inline = redcon.AppendArray(b.inline, len(b.spans))
	for i, s := range b.spans {
		b.inline = redcon.AppendBulk(b.inline, b.scratch[s.lo:s.hi])
		end := len(b.inline) - 2
		b.spans[i] = span{end - (s.hi - s.lo), end}
	}
	raw := b.inline[start:len(b.inline):len(b.inline)]
	first := len(b.args)
	for _, s := range b.spans {
		b.args = append(b.args, b.inline[s.lo:s.hi:s.hi])
	}
	b.reqs = append(b.reqs, Request{Args: b.args[first:len(b.args):len(b.args)], Raw: raw})
	return true
}

// ParseInt parses a number as Redis's string2ll does (request lengths, and
// the integer arguments of commands the proxy reads):
// an optional '-', then "0" or a digit 1-9 followed by digits, fitting in an
// int64. There is no '+', no leading zero, no space, and "-0" is invalid.
func ParseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || b[0] < '1' || b[0] > '9' {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	switch {
	case neg && v <= 1<<63:
		return -int64(v), true
	case !neg && v <= math.MaxInt64:
		return int64(v), true
	}
	return 0, false
}
