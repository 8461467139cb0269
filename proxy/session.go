package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"strconv"
	"sync"

	"github.com/rs/zerolog"
	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// session serves one client connection. Its goroutine reads a burst of
// pipelined commands, routes each (see commands.go), forwards them and writes
// the replies back with one write per burst.
//
// Stateless commands travel, batched, on the shared connections. A command
// that leaves state on the connection pins the session to a dedicated
// connection until the state is gone (or, for lasting state, until the
// session ends); while pinned, replies flow to the client from the pinned
// connection's own reader.
type session struct {
	srv  *Server
	conn *tls.Conn
	id   tlsconf.Identity
	log  zerolog.Logger
	cmds *commandReader

	wmu   sync.Mutex // serialises writes to conn: the pinned reader writes too
	out   []byte     // replies not yet written to the client
	batch upstream.Batch
	proto int // 2 or 3, as set by HELLO

	pin     *upstream.Pinned
	pinOwed int   // commands queued on pin, not yet written
	pinErr  error // a failed pin fails the rest of the burst
	multi   bool  // inside MULTI
	watch   bool  // WATCH is active
	sticky  bool  // state that lasts until the session ends
}

func newSession(srv *Server, conn *tls.Conn, id tlsconf.Identity) *session {
	s := &session{
		srv:   srv,
		conn:  conn,
		id:    id,
		proto: 2,
		log:   srv.log.With().Str("remote", conn.RemoteAddr().String()).Object("identity", id).Logger(),
	}
	s.cmds = newCommandReader(conn, srv.cfg.Listen.MaxRequestBytes)
	return s
}

func (s *session) serve() {
	s.log.Debug().Msg("session started")
	defer s.end()
	for {
		cmds, err := s.cmds.read()
		if err != nil {
			s.readFailed(err)
			return
		}
		for _, cmd := range cmds {
			if !s.dispatch(cmd) {
				s.finishBurst()
				return
			}
		}
		if !s.finishBurst() {
			return
		}
		s.cmds.release()
	}
}

// dispatch routes one command. It returns false when the session must end.
// Every command passes here: this is where policy checks and per-command
// counters belong.
func (s *session) dispatch(cmd redcon.Command) bool {
	if s.pinErr != nil {
		s.reply(upstream.AppendUnavailable(nil, s.pinErr))
		return true
	}
	r := classify(cmd.Args)
	switch r {
	case routeSelect:
		r = routeSticky
		if s.isDefaultDB(cmd.Args) {
			r = routeShared
		}
	case routeWait:
		if s.pin == nil {
			s.reply(redcon.AppendError(nil, denyReason(cmd.Args)))
			return true
		}
		r = routeBlocking
	case routeDeny:
		s.reply(redcon.AppendError(nil, denyReason(cmd.Args)))
		return true
	case routeQuit:
		s.reply([]byte("+OK\r\n"))
		return false
	case routeReset:
		return s.reset(cmd)
	}

	if s.pin != nil && (r == routeShared || r == routeHello) && s.clean() {
		s.unpin(upstream.Clean)
	}
	if s.pin == nil {
		switch r {
		case routeShared, routeEndTx, routeUnwatch:
			s.batch.Cmds = append(s.batch.Cmds, cmd.Raw)
			return true
		case routeHello:
			s.hello(cmd)
			return true
		}
		if !s.pinSession() {
			s.reply(upstream.AppendUnavailable(nil, s.pinErr))
			return true
		}
	}
	s.trackState(r, cmd.Args)
	s.pin.Queue(cmd.Raw)
	s.pinOwed++
	return true
}

// clean reports whether the pinned connection holds no state of the
// client's, so the session may go back to the shared connections.
func (s *session) clean() bool {
	return !s.multi && !s.watch && !s.sticky && !s.pin.Push()
}

// trackState records the state a command forwarded on the pinned
// connection leaves there.
func (s *session) trackState(r route, args [][]byte) {
	switch r {
	case routeSticky:
		s.sticky = true
	case routeHello:
		s.sticky = true // the protocol of the pinned connection changes
		if v, ok := protover(args); ok {
			s.proto = v
		}
	case routeMulti:
		s.multi = true
	case routeWatch:
		s.watch = true
	case routeEndTx:
		s.multi, s.watch = false, false
	case routeUnwatch:
		s.watch = false
	case routePush:
		s.pin.SetPush()
	}
}

// hello forwards HELLO on a shared connection of the protocol it asks for.
func (s *session) hello(cmd redcon.Command) {
	v, ok := protover(cmd.Args)
	if !ok || v == s.proto {
		s.batch.Cmds = append(s.batch.Cmds, cmd.Raw)
		return
	}
	s.flushShared()
	old, start := s.proto, len(s.out)
	s.proto = v
	s.batch.Cmds = append(s.batch.Cmds, cmd.Raw)
	s.flushShared()
	if s.out[start] == '-' {
		s.proto = old // Redis refused: the protocol did not change
	}
}

// protover returns the protocol version HELLO asks for, when it is one the
// proxy serves.
func protover(args [][]byte) (int, bool) {
	if len(args) < 2 {
		return 0, false
	}
	switch string(args[1]) {
	case "2":
		return 2, true
	case "3":
		return 3, true
	}
	return 0, false
}

func (s *session) isDefaultDB(args [][]byte) bool {
	if len(args) != 2 {
		return false
	}
	n, err := strconv.Atoi(string(args[1]))
	return err == nil && n == s.srv.defaultDB
}

// reset answers RESET. The session's state goes back to what a new
// connection has; on a pinned connection Redis itself runs the RESET (which
// also ends subscriptions and MONITOR) and the connection is then cleaned up
// for reuse.
func (s *session) reset(cmd redcon.Command) bool {
	if s.pin == nil {
		s.flushShared()
		s.proto = 2
		s.out = append(s.out, "+RESET\r\n"...)
		return true
	}
	s.pin.ExpectReset()
	s.pin.Queue(cmd.Raw)
	s.pinOwed++
	if err := s.flushPinned(); err != nil {
		return false
	}
	if err := s.pin.Wait(); err != nil {
		return false
	}
	s.unpin(upstream.Clean)
	s.proto = 2
	return true
}

// pinSession moves the session onto a dedicated connection. Everything
// before it has been answered first, so commands run in the order sent.
func (s *session) pinSession() bool {
	s.flushShared()
	if !s.writeOut() {
		return false
	}
	pc, err := s.srv.pool.Pin(context.Background(), s.proto, s.writeClient, s.upstreamFailed)
	if err != nil {
		s.pinErr = err
		s.log.Warn().Err(err).Msg("cannot pin an upstream connection")
		return false
	}
	s.pin = pc
	return true
}

// unpin returns the dedicated connection once every reply owed on it has
// reached the client.
func (s *session) unpin(mode upstream.ReleaseMode) {
	s.flushPinned()
	s.pin.Quiesce()
	s.pin.Unpin(mode)
	s.pin = nil
	s.multi, s.watch, s.sticky = false, false, false
}

// upstreamFailed runs when the pinned connection fails: the state the client
// had there is gone, so its connection is closed, as Redis would.
func (s *session) upstreamFailed(err error) {
	s.log.Warn().Err(err).Msg("pinned upstream connection failed; closing client")
	s.conn.Close()
}

// reply writes a reply the proxy makes itself, after every earlier reply.
func (s *session) reply(b []byte) {
	s.flushShared()
	if s.pin == nil {
		s.out = append(s.out, b...)
		return
	}
	s.flushPinned()
	s.pin.Quiesce()
	s.writeClient(b)
}

func (s *session) flushShared() {
	if len(s.batch.Cmds) == 0 {
		return
	}
	s.batch.Out = s.out
	s.srv.pool.Do(s.proto, &s.batch)
	s.out = s.batch.Out
	s.batch.Cmds = s.batch.Cmds[:0]
}

func (s *session) flushPinned() error {
	if s.pin == nil || s.pinOwed == 0 {
		return nil
	}
	n := s.pinOwed
	s.pinOwed = 0
	return s.pin.Flush(n)
}

// finishBurst sends what the burst queued and writes the replies.
func (s *session) finishBurst() bool {
	s.pinErr = nil
	s.flushShared()
	if err := s.flushPinned(); err != nil {
		return false
	}
	return s.writeOut()
}

func (s *session) writeOut() bool {
	if len(s.out) == 0 {
		return true
	}
	err := s.writeClient(s.out)
	s.out = s.out[:0]
	if cap(s.out) > 1<<20 {
		s.out = nil // do not keep a large reply's buffer around
	}
	return err == nil
}

func (s *session) writeClient(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.conn.Write(b)
	return err
}

func (s *session) readFailed(err error) {
	switch {
	case errors.Is(err, errRequestTooLarge):
		s.log.Warn().Int("max_request_bytes", s.cmds.limit.max).Msg("request too large; closing client")
		s.writeClient(redcon.AppendError(nil, "ERR Protocol error: request larger than listen.max_request_bytes"))
	case s.cmds.limit.err != nil:
		// The connection closed or failed: nothing to answer.
	default:
		// redcon found malformed RESP; its message starts "Protocol error".
		s.log.Info().Str("reason", err.Error()).Msg("client protocol error; closing client")
		s.writeClient(redcon.AppendError(nil, "ERR "+err.Error()))
	}
}

func (s *session) end() {
	if s.pin != nil {
		mode := upstream.Clean
		if !s.clean() {
			mode = upstream.Dirty
		}
		s.pin.Unpin(mode)
		s.pin = nil
	}
	s.log.Debug().Msg("session ended")
}
