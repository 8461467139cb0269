package upstream

// The reader side of a dedicated connection: it forwards what Redis sends to
// the client frame by frame, keeps the queue of owed replies in step, and
// learns the connection's state from the replies.

import (
	"bytes"
	"errors"
	"io"
	"net"
)

var errStopped = errors.New("stopped")

func (d *Dedicated) readLoop() {
	err := d.forward()
	d.mu.Lock()
	quit := d.quitting && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed))
	if d.stopping || d.killed || errors.Is(err, errStopped) || quit {
		err = nil
	}
	if quit {
		d.state.Sticky = true // closed by Redis
	}
	d.err = err
	close(d.exited)
	d.mu.Unlock()
	if err != nil || quit {
		d.onFail(err)
	}
}

// forward reads the connection for as long as the session holds it, even
// when no reply is owed, so Redis going away is noticed at once.
func (d *Dedicated) forward() error {
	c := d.c
	for {
		if c.r == c.w {
			c.r, c.w = 0, 0
		}
		if err := c.fill(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && d.isStopping() {
				return errStopped
			}
			return err
		}
		d.mu.Lock()
		err := d.process()
		d.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (d *Dedicated) isStopping() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stopping
}

// process forwards what the buffer holds, frame by frame, and keeps the
// queue of owed replies in step. It runs with mu held, and leaves in the
// buffer only a partial header line (or a possible partial fence).
func (d *Dedicated) process() error {
	c := d.c
	start := c.r // bytes from start to c.r are to be forwarded
	flush := func() error {
		if c.r > start {
			if err := d.toClient(c.buf[start:c.r]); err != nil {
				return err
			}
		}
		start = c.r
		return nil
	}
	for {
		if err := d.writeLocals(flush); err != nil {
			return err
		}
		p := c.buf[c.r:c.w]
		if len(p) == 0 {
			break
		}
		if d.state.Streaming {
			c.r = c.w // a replication stream: bytes, forwarded as they come
			break
		}
		if d.state.Uncounted && !c.scan.InReply() {
			if d.headIsFence() {
				f, partial := d.matchFence(p)
				if partial {
					break // wait for the rest before deciding
				}
				if f > 0 {
					if err := flush(); err != nil {
						return err
					}
					c.r += f
					start = c.r
					d.pop()
					continue
				}
			}
		}
		if c.scan.AtPush(p) {
			n, _, err := c.scan.ScanPush(p)
			if err != nil {
				return err
			}
			c.r += n
			if n == 0 {
				break
			}
			continue
		}
		if d.state.Uncounted {
			n, _, err := c.scan.Scan(p, 1)
			if err != nil {
				return err
			}
			c.r += n
			if n == 0 {
				break
			}
			continue
		}
		if len(d.queue) == 0 {
			return errors.New("reply from Redis that no command asked for")
		}
		e := d.queue[0]
		if e.effect == EffectReplicate && !c.scan.InReply() && p[0] != '-' && p[0] != '!' {
			// Redis accepted SYNC/PSYNC: what follows is its replication
			// stream (+FULLRESYNC or +CONTINUE, keep-alive newlines, the
			// RDB payload, then commands), not replies.
			d.state.Streaming = true
			d.pop()
			continue
		}
		if !c.scan.InReply() {
			d.headN = 0
		}
		if d.headN < len(d.head) {
			d.headN += copy(d.head[d.headN:], p)
		}
		replace := e.effect == EffectAbortExec || e.hide
		if replace {
			if err := flush(); err != nil {
				return err
			}
		}
		n, done, err := c.scan.Scan(p, 1)
		if err != nil {
			return err
		}
		c.r += n
		if replace {
			start = c.r // the DISCARD's reply is not the client's
		}
		if done == 1 {
			if e.effect == EffectAbortExec {
				if err := d.toClient(d.abortReply()); err != nil {
					return err
				}
			}
			d.apply(e, d.head[:d.headN])
			if h := d.c.opts.Hooks; h != nil && h.ReplyError != nil && !e.hide && d.headN > 0 && (d.head[0] == '-' || d.head[0] == '!') {
				h.ReplyError(e.tag)
			}
			d.pop()
			continue
		}
		if n == 0 {
			break
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if len(d.queue) == 0 {
		select {
		case d.quiet <- struct{}{}:
		default:
		}
	}
	return nil
}

// writeLocals writes the proxy-made replies at the head of the queue, and
// switches to uncounted replies when that point of the queue is reached.
func (d *Dedicated) writeLocals(flush func() error) error {
	for len(d.queue) > 0 {
		e := d.queue[0]
		switch {
		case e.local != nil:
			if err := flush(); err != nil {
				return err
			}
			if err := d.toClient(e.local); err != nil {
				return err
			}
		case e.effect == EffectUncounted:
			d.state.Uncounted = true
		default:
			return nil
		}
		d.pop()
	}
	return nil
}

func (d *Dedicated) pop() {
	d.queue[0] = expect{}
	d.queue = d.queue[1:]
	if len(d.queue) == 0 {
		d.queue = nil
	}
}

func (d *Dedicated) headIsFence() bool { return len(d.queue) > 0 && d.queue[0].fence }

// matchFence reports the length of the fence reply at the start of p (0 if
// p starts with something else), or partial when p is too short to tell.
func (d *Dedicated) matchFence(p []byte) (n int, partial bool) {
	for _, f := range d.fenceR {
		if len(p) < len(f) {
			if bytes.HasPrefix(f, p) {
				return 0, true
			}
			continue
		}
		if bytes.HasPrefix(p, f) {
			return len(f), false
		}
	}
	return 0, false
}

// apply records what a reply says about the connection's state; head holds
// the reply's first bytes.
func (d *Dedicated) apply(e expect, head []byte) {
	st := &d.state
	isErr := len(head) > 0 && (head[0] == '-' || head[0] == '!')
	if isErr {
		if e.effect == EffectExec && bytes.HasPrefix(head, []byte("-EXECABORT")) {
			st.Multi, st.Watching = false, false
		}
		return
	}
	if st.Multi {
		// Queued inside MULTI: its effect comes at EXEC, unknown here.
		switch e.effect {
		case EffectExec, EffectDiscard, EffectAbortExec, EffectReset:
		case EffectSelect, EffectHello, EffectSetName, EffectSticky, EffectUnknown:
			st.Sticky = true
			return
		default:
			return
		}
	}
	switch e.effect {
	case EffectMulti:
		st.Multi = true
	case EffectExec, EffectDiscard, EffectAbortExec:
		st.Multi, st.Watching = false, false
	case EffectWatch:
		st.Watching = true
	case EffectUnwatch:
		st.Watching = false
	case EffectSelect:
		st.DB = e.arg
	case EffectHello:
		if e.arg != 0 {
			st.Proto = e.arg
		}
	case EffectSetName:
		st.Named = true
	case EffectSticky, EffectUnknown:
		st.Sticky = true
	case EffectReset:
		sticky := st.Sticky
		*st = State{Proto: 2, DB: 0, NeedsSetUp: true, Sticky: sticky}
	}
}

// abortReply is what the client's EXEC gets in place of the DISCARD's reply:
// EXECABORT when the DISCARD ended a transaction, else what Redis answers to
// EXEC without MULTI.
func (d *Dedicated) abortReply() []byte {
	if d.headN > 0 && d.head[0] == '+' {
		return []byte("-EXECABORT Transaction discarded because of previous errors.\r\n")
	}
	return []byte("-ERR EXEC without MULTI\r\n")
}
