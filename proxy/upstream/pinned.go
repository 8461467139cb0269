package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Pinned is a dedicated connection serving one client session while the
// session holds state on it (a transaction, a subscription, a blocking
// command, ...). The session writes commands; a reader goroutine forwards
// reply bytes to the client as they arrive, so pushed data (pub/sub messages,
// MONITOR lines, tracking invalidations) flows without a request, and the
// session keeps reading its client, noticing at once when it goes away.
type Pinned struct {
	pool *Pool
	c    *Conn
	// toClient writes reply bytes to the client. It must be safe to call
	// concurrently with the session's own writes.
	toClient func([]byte) error
	// onFail is called from the reader when the upstream connection fails.
	onFail func(error)

	owed  atomic.Int64 // replies still owed (not counted in push mode)
	push  atomic.Bool  // replies are no longer countable: read continuously
	reset atomic.Bool  // a RESET was sent: stop after forwarding its reply
	wbuf  []byte

	mu       sync.Mutex
	quiet    *sync.Cond // signalled when owed drops to 0 or the reader exits
	exited   chan struct{}
	err      error // why the reader stopped; nil when asked to stop
	stopping bool
}

// Pin leases a dedicated connection for a session.
func (p *Pool) Pin(ctx context.Context, proto int, toClient func([]byte) error, onFail func(error)) (*Pinned, error) {
	c, err := p.lease(ctx, proto)
	if err != nil {
		return nil, err
	}
	pc := &Pinned{
		pool:     p,
		c:        c,
		toClient: toClient,
		onFail:   onFail,
		exited:   make(chan struct{}),
	}
	pc.quiet = sync.NewCond(&pc.mu)
	go pc.readLoop()
	return pc, nil
}

// Queue adds a raw command to the next write.
func (pc *Pinned) Queue(cmd []byte) {
	pc.wbuf = append(pc.wbuf, cmd...)
}

// Flush writes the queued commands, which are owed n replies.
func (pc *Pinned) Flush(n int) error {
	if len(pc.wbuf) == 0 {
		return nil
	}
	if err := pc.failed(); err != nil {
		return err
	}
	pc.owed.Add(int64(n))
	pc.c.nc.SetWriteDeadline(time.Now().Add(pc.c.opts.WriteTimeout))
	_, err := pc.c.nc.Write(pc.wbuf)
	pc.wbuf = pc.wbuf[:0]
	if err != nil {
		pc.c.Close()
	}
	return err
}

// SetPush switches the connection to push mode for good: from now on Redis
// may send data nobody asked for, so the reader forwards whatever arrives.
func (pc *Pinned) SetPush() { pc.push.Store(true) }

// Push reports whether the connection is in push mode.
func (pc *Pinned) Push() bool { return pc.push.Load() }

// ExpectReset makes the reader stop once it has forwarded the reply to a
// RESET the session is about to send.
func (pc *Pinned) ExpectReset() { pc.reset.Store(true) }

// Quiesce waits until every reply owed has been forwarded to the client, so
// that whatever the session writes next comes after them. In push mode it
// cannot know and returns at once.
func (pc *Pinned) Quiesce() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for !pc.push.Load() && pc.owed.Load() > 0 && !isClosed(pc.exited) {
		pc.quiet.Wait()
	}
	return pc.err
}

// Wait blocks until the reader has stopped by itself (after the reply to a
// RESET or QUIT, or on failure) and returns why.
func (pc *Pinned) Wait() error {
	<-pc.exited
	return pc.err
}

func (pc *Pinned) failed() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.err
}

// Unpin stops the reader and returns the connection to the pool. A
// connection with replies still owed, in push mode, or whose reader failed is
// closed whatever mode says; Dirty means the client changed connection state,
// which RESET clears before reuse.
func (pc *Pinned) Unpin(mode ReleaseMode) {
	pc.mu.Lock()
	pc.stopping = true
	pc.mu.Unlock()
	pc.c.nc.SetReadDeadline(time.Now()) // wake the reader
	if pc.reset.Load() && mode == Clean {
		mode = Dirty // RESET left it as the default user
	}
	if mode == Broken || pc.push.Load() || pc.owed.Load() != 0 {
		mode = Broken
		pc.c.Close() // wakes a reader blocked on the connection
	}
	<-pc.exited
	pc.c.nc.SetReadDeadline(time.Time{})
	if pc.err != nil {
		mode = Broken
	}
	pc.pool.release(pc.c, mode)
}

// resetReply is what Redis answers to RESET.
var resetReply = []byte("+RESET\r\n")

func (pc *Pinned) readLoop() {
	err := pc.forward()
	if err != nil && !errors.Is(err, errStopped) && !pc.push.Load() {
		// Answer the commands that will get no reply now.
		var out []byte
		for n := pc.owed.Load(); n > 0; n-- {
			out = AppendUnavailable(out, err)
		}
		if len(out) > 0 {
			pc.toClient(out)
		}
	}
	pc.mu.Lock()
	if pc.stopping || errors.Is(err, errStopped) {
		err = nil
	}
	pc.err = err
	close(pc.exited)
	pc.quiet.Broadcast()
	pc.mu.Unlock()
	if err != nil {
		pc.onFail(err)
	}
}

var errStopped = errors.New("stopped")

// forward reads the connection for as long as the session is pinned, even
// when no reply is owed: Redis sends nothing unasked outside push mode, so
// anything read then (an EOF when Redis goes away) is noticed at once.
func (pc *Pinned) forward() error {
	c := pc.c
	for {
		if c.r == c.w {
			if err := c.fill(); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && pc.isStopping() {
					return errStopped // Unpin interrupted the read
				}
				if err == io.EOF {
					return errors.New("Redis closed the connection")
				}
				return err
			}
		}
		// Scan reply by reply so that owed replies are counted and a RESET
		// reply is recognised. Replies count as answered only once their
		// bytes are with the client: Quiesce promises that.
		start, answered := c.r, int64(0)
		for c.r < c.w {
			atStart := !c.scan.InReply()
			n, done, err := c.scan.Scan(c.buf[c.r:c.w], 1)
			if err != nil {
				return err
			}
			if n == 0 {
				break // a partial line: read more
			}
			isReset := done == 1 && atStart && bytes.Equal(c.buf[c.r:c.r+n], resetReply)
			c.r += n
			if done == 0 {
				continue
			}
			push := pc.push.Load()
			if !push {
				answered++
			}
			if isReset && pc.reset.Load() && (push || pc.owed.Load() == answered) {
				if err := pc.toClient(c.buf[start:c.r]); err != nil {
					return err
				}
				pc.replied(answered)
				return errStopped
			}
		}
		if c.r > start {
			if err := pc.toClient(c.buf[start:c.r]); err != nil {
				return err
			}
		}
		pc.replied(answered)
		if c.r == c.w {
			c.r, c.w = 0, 0
		} else if err := c.fill(); err != nil {
			return err
		}
	}
}

func (pc *Pinned) isStopping() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.stopping
}

func (pc *Pinned) replied(n int64) {
	if n != 0 && pc.owed.Add(-n) == 0 {
		pc.mu.Lock()
		pc.quiet.Broadcast()
		pc.mu.Unlock()
	}
}
