// Package upstream owns the connections from the proxy to Redis: dialing over
// TCP, a unix socket or TLS, the per-connection set-up (AUTH, HELLO, SELECT),
// the multiplexed shared connections and the pool of dedicated ones.
package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
)

// Options says how to reach Redis and how to set up each connection.
type Options struct {
	Network  string      // "tcp" or "unix"
	Address  string      // host:port or socket path
	TLS      *tls.Config // nil for a plain connection
	Username string      // ACL user; empty means the default user
	Password string      // with Username empty: AUTH as the default user
	DB       int         // the database connections start in (the URL's)

	DialTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration

	Hooks *Hooks // nil: nothing is counted
}

// Hooks let the owner of a pool count what happens on its connections. They
// run on the connections' goroutines and must be quick; any may be nil.
type Hooks struct {
	// ReplyError: Redis answered a command with an error; tag is the
	// command's (Batch.Tags, Dedicated.Tag), 0 when it has none.
	ReplyError func(tag uint16)
	// Dial: a dial finished; err is nil when it succeeded.
	Dial func(err error)
	// Batch: a batch on a shared connection got its replies after d.
	Batch func(d time.Duration)
	// PeerCertificate: Redis presented this certificate on a TLS dial.
	PeerCertificate func(*x509.Certificate)
}

// ReplyError is an error reply Redis gave to a set-up command. Its text is
// what Redis said, so it is safe to show to a client (it never holds the
// password).
type ReplyError struct {
	Command string // AUTH, HELLO, SELECT or RESET
	Reply   string // the error line without "-" and CRLF
}

func (e *ReplyError) Error() string { return e.Command + ": " + e.Reply }

// readBufferSize is the read buffer of an upstream connection. Replies larger
// than this stream through it; only a single header line must fit.
const readBufferSize = 64 << 10

// Conn is one connection to Redis, set up and ready for commands.
type Conn struct {
	nc    net.Conn // TLS on top of raw for rediss://
	raw   net.Conn // the socket
	opts  *Options
	proto int   // 2 or 3: the protocol the connection was set up with
	db    int   // the database selected on the connection
	id    int64 // Redis's CLIENT ID of the connection

	buf  []byte // read buffer; buf[r:w] holds bytes read but not yet consumed
	r, w int
	scan resp.Scanner
}

// Dial connects to Redis and runs the set-up commands for the given protocol
// version (2 or 3) and database.
func Dial(ctx context.Context, o *Options, proto, db int) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, o.Network, o.Address)
	if err != nil {
		return nil, err
	}
	nc := raw
	if o.TLS != nil {
		tc := tls.Client(nc, o.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		if h := o.Hooks; h != nil && h.PeerCertificate != nil {
			if peer := tc.ConnectionState().PeerCertificates; len(peer) > 0 {
				h.PeerCertificate(peer[0])
			}
		}
		nc = tc
	}
	c := &Conn{nc: nc, raw: raw, opts: o, proto: proto, buf: make([]byte, readBufferSize)}
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	if err := c.setUp(nil, proto, db); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// setUp writes prefix (commands whose replies the caller expects first, such
// as RESET) followed by the set-up commands in one write, and checks every
// reply. The caller sets deadlines.
//
// These are the only commands of the proxy's own that reach Redis on a new
// connection: HELLO 3 (with AUTH) or AUTH, SELECT when the database is not 0,
// and CLIENT ID, which tells the proxy the connection's id so that no client
// can name a connection it does not own.
func (c *Conn) setUp(prefix []string, proto, db int) error {
	type step struct {
		name string
		args []string
	}
	var steps []step
	for _, p := range prefix {
		steps = append(steps, step{p, []string{p}})
	}
	o := c.opts
	// A user without a password is still honoured: a nopass ACL user
	// accepts any password, and any other user fails closed.
	auth := o.Password != "" || o.Username != ""
	user := o.Username
	if user == "" {
		user = "default"
	}
	switch {
	case proto == 3 && auth:
		steps = append(steps, step{"HELLO", []string{"HELLO", "3", "AUTH", user, o.Password}})
	case proto == 3:
		steps = append(steps, step{"HELLO", []string{"HELLO", "3"}})
	case auth:
		steps = append(steps, step{"AUTH", []string{"AUTH", user, o.Password}})
	}
	if db != 0 {
		steps = append(steps, step{"SELECT", []string{"SELECT", strconv.Itoa(db)}})
	}
	steps = append(steps, step{"CLIENT ID", []string{"CLIENT", "ID"}})
	var out []byte
	for _, s := range steps {
		out = appendCommand(out, s.args...)
	}
	if _, err := c.nc.Write(out); err != nil {
		return err
	}
	var failed error
	for _, s := range steps {
		reply, err := c.readReply()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if len(reply) > 0 && reply[0] == '-' {
			if s.name == "CLIENT ID" {
				continue // an ACL user may not run it: the id stays unknown (0)
			}
			// Read the remaining replies too, so the connection stays in
			// step; the first error is the one reported.
			if failed == nil {
				failed = &ReplyError{Command: s.name, Reply: string(reply[1 : len(reply)-2])}
			}
			continue
		}
		if s.name == "CLIENT ID" {
			c.id, _ = strconv.ParseInt(string(bytes.TrimSpace(reply[1:])), 10, 64)
		}
	}
	if failed != nil {
		return failed
	}
	c.proto, c.db = proto, db
	return nil
}

func appendCommand(out []byte, args ...string) []byte {
	out = redcon.AppendArray(out, len(args))
	for _, a := range args {
		out = redcon.AppendBulkString(out, a)
	}
	return out
}

// Command sends one command on a connection nobody else uses (tlsproxy
// check's probes) and returns Redis's reply as it came, error replies
// included, waiting at most the dial timeout. Replies must be small.
func (c *Conn) Command(args ...string) ([]byte, error) {
	c.nc.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := c.nc.Write(appendCommand(nil, args...)); err != nil {
		return nil, err
	}
	return c.readReply()
}

// readReply reads one whole reply. It is for small set-up replies only: the
// reply is copied out of the read buffer.
func (c *Conn) readReply() ([]byte, error) {
	var reply []byte
	for {
		n, done, err := c.scan.Scan(c.buf[c.r:c.w], 1)
		if err != nil {
			return nil, err
		}
		reply = append(reply, c.buf[c.r:c.r+n]...)
		c.r += n
		if done == 1 {
			return reply, nil
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

// errLineTooLong means Redis sent a header line that does not fit the read
// buffer, which no real reply does.
var errLineTooLong = errors.New("upstream reply line longer than the read buffer")

// fill reads more bytes into the buffer, first moving unconsumed bytes (a
// partial header line) to its start.
func (c *Conn) fill() error {
	if c.r > 0 {
		c.w = copy(c.buf, c.buf[c.r:c.w])
		c.r = 0
	}
	if c.w == len(c.buf) {
		return errLineTooLong
	}
	n, err := c.nc.Read(c.buf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	return err
}

// reset clears the state a client left on the connection with RESET and
// runs the set-up again, so the connection can serve another client.
func (c *Conn) reset() error {
	c.nc.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	defer c.nc.SetDeadline(time.Time{})
	// RESET returns the connection to RESP2, database 0 and the default user.
	return c.setUp([]string{"RESET"}, c.proto, c.db)
}

// selectDB moves an idle connection to another database.
func (c *Conn) selectDB(db int) error {
	c.nc.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	defer c.nc.SetDeadline(time.Time{})
	cmd := redcon.AppendArray(nil, 2)
	cmd = redcon.AppendBulkString(cmd, "SELECT")
	cmd = redcon.AppendBulkString(cmd, strconv.Itoa(db))
	if _, err := c.nc.Write(cmd); err != nil {
		return err
	}
	reply, err := c.readReply()
	if err != nil {
		return err
	}
	if reply[0] == '-' {
		return &ReplyError{Command: "SELECT", Reply: string(reply[1 : len(reply)-2])}
	}
	c.db = db
	return nil
}
