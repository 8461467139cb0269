package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// clientWriteTimeout bounds a write to a client: one that stops reading its
// replies is disconnected rather than holding its session forever. (A
// variable so that a test can shorten it.)
var clientWriteTimeout = 30 * time.Second

// maxBulkLen is Redis's default proto-max-bulk-len: a longer bulk argument
// is a protocol error, as in Redis.
const maxBulkLen = 512 << 20

// session serves one client connection. Its goroutine reads the client's
// requests, routes each (dispatch.go), forwards them and writes the replies.
//
// Plain request/reply commands travel, batched with other clients', on the
// shared connections of the session's protocol and database; the session
// waits for their replies and writes them with one write per burst. Any
// other command moves the session onto a dedicated connection
// (upstream.Dedicated), whose reader then writes every reply to the client
// in order; the session returns to the shared connections once the
// dedicated connection has answered everything and holds no state.
type session struct {
	srv   *Server
	conn  *tls.Conn
	id    tlsconf.Identity
	log   zerolog.Logger
	rd    *resp.RequestReader
	token string // makes the session's fence PINGs unforgeable

	wmu   sync.Mutex // serialises writes to conn: the dedicated reader writes too
	out   []byte     // shared-path replies not yet written to the client
	batch upstream.Batch
	// streamed counts the shared-path reply bytes written in pieces during
	// the current burst (garbage once written).
	streamed int

	// What a client connection has in Redis, kept by the proxy while the
	// session uses shared connections.
	proto int    // 2 or 3, as set by HELLO
	db    int    // as set by SELECT
	name  []byte // as set by CLIENT SETNAME or HELLO SETNAME

	pool         *upstream.Pool // the configured user's, or the one the client's AUTH chose
	authRefusals int            // AUTHs Redis refused on a new connection (see maxAuthRefusals)
	clientID     int64          // the session's own client id (sessionIDBase and up)

	// What other sessions may read: for CLIENT KILL, CLIENT UNBLOCK and
	// CLIENT TRACKING REDIRECT naming this session.
	started time.Time
	addr    string                             // the client's address (CLIENT LIST's addr=)
	laddr   string                             // the proxy's address the client reached
	dedAt   atomic.Pointer[upstream.Dedicated] // ded
	user    atomic.Pointer[string]             // the Redis user the session's commands run as
	kind    atomic.Uint32                      // clientType
	pin     atomic.Uint32                      // pinReason while ded is held

	route commands.Route // of the command being dispatched
	cmdID uint16         // its id in the command table (commands.Resolve)

	closed atomic.Bool // the client's connection was closed
	killed atomic.Bool // by another session's CLIENT KILL

	ded        *upstream.Dedicated
	uncounted  bool // ded was sent a command after which replies are not countable
	dedForLife bool // ded got a command whose state lasts (subscriptions, CLIENT NO-EVICT, ...)
	inMulti    bool // MULTI sent on ded, EXEC or DISCARD not yet
	txAborted  bool // a command was refused inside that MULTI
	failTx     bool // MULTI or WATCH found no dedicated connection: fail all through EXEC/DISCARD
}

func newSession(srv *Server, conn *tls.Conn, id tlsconf.Identity) *session {
	var tok [16]byte
	rand.Read(tok[:])
	addr := conn.RemoteAddr().String()
	s := &session{
		srv:   srv,
		conn:  conn,
		id:    id,
		token: "tlsproxy-fence-" + hex.EncodeToString(tok[:]),
		proto: 2,
		db:    srv.defaultDB,
		pool:  srv.pool,
		log:   srv.log.With().Str("remote", addr).Object("identity", id).Logger(),

		started: time.Now(),
		addr:    addr,
		laddr:   conn.LocalAddr().String(),
	}
	s.setPool(srv.pool)
	s.clientID = sessionIDBase + srv.lastID.Add(1)
	srv.ids.Store(s.clientID, s)
	srv.stats.sessions.Add(1)
	srv.stats.active.Add(1)
	s.rd = resp.NewRequestReader(conn, srv.cfg.Listen.MaxRequestBytes, maxBulkLen)
	s.batch.Stream = s.stream
	s.batch.Limit, s.batch.Overflow = srv.limits.Load().ClientOutputBuffer, s.outputOverflow
	return s
}

func (s *session) serve() {
	s.log.Info().Str("identity_name", s.id.String()).Msg("session started")
	defer s.end()
	defer func() {
		if r := recover(); r != nil {
			// A bug must cost this client its connection, not the process.
			s.log.Error().Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("session panicked; closing client")
		}
	}()
	for {
		idle := s.srv.limits.Load().IdleTimeout
		if s.srv.draining.Load() {
			s.drainEnd()
			return
		}
		if idle > 0 && !s.uncounted {
			s.conn.SetReadDeadline(time.Now().Add(idle))
		}
		reqs, err := s.rd.Read()
		if idle > 0 {
			s.conn.SetReadDeadline(time.Time{}) // waits while serving watch the client without it
		}
		for _, req := range reqs {
			if s.closed.Load() {
				return // nothing after a lost reply or a dead client runs
			}
			if !s.dispatch(req) {
				s.finishBurst()
				return
			}
		}
		if !s.finishBurst() {
			return
		}
		if err != nil {
			if isTimeout(err) {
				s.readTimedOut()
			} else {
				s.readFailed(err)
			}
			return
		}
		before := s.rd.BufferCap()
		s.rd.Release()
		memory.afterLarge(before - s.rd.BufferCap() + s.streamed)
		s.streamed = 0
	}
}

// reply writes a reply the proxy makes itself, after every earlier reply.
func (s *session) reply(b []byte) {
	if s.ded != nil {
		if s.inMulti {
			s.txAborted = true // as Redis fails EXEC after a rejected command
		}
		if s.ded.Reply(b, s.inMulti) != nil {
			s.closeClient()
		}
		return
	}
	s.flushShared()
	s.out = append(s.out, b...)
}

func (s *session) replyError(text string) { s.reply(redcon.AppendError(nil, text)) }

// flushShared sends the commands queued for the shared connections and
// waits for their replies. When the connection failed after writing some of
// them, their outcome is unknown: the client is disconnected, as a dead Redis
// would disconnect it.
func (s *session) flushShared() {
	if len(s.batch.Cmds) == 0 {
		return
	}
	s.batch.Out = s.out
	s.pool.Do(s.proto, s.db, &s.batch)
	s.out = s.batch.Out
	clear(s.batch.Cmds) // they point into the request buffer, which may be large
	s.batch.Cmds, s.batch.Tags = s.batch.Cmds[:0], s.batch.Tags[:0]
	if s.batch.Lost {
		s.writeOut()
		s.log.Warn().Msg("shared upstream connection failed with commands in flight; closing client")
		s.closeClient()
	}
}

// stream writes shared-path replies that arrive in large amounts at once,
// so they never pile up in the proxy.
func (s *session) stream(b []byte) {
	s.streamed += len(b)
	s.writeClient(b)
}

// finishBurst sends what the burst queued and writes the replies. A
// dedicated connection that may end the burst holding no state (a finished
// transaction, a blocking command, a command Redis refused) is waited for,
// watching the client, and given back at once: a client that goes idle
// afterwards holds no dedicated connection.
func (s *session) finishBurst() bool {
	s.flushShared()
	if s.ded == nil {
		return s.writeOut()
	}
	if s.ded.Flush() != nil {
		return false
	}
	if s.inMulti || s.dedForLife {
		return true
	}
	if !s.waitDedicated() {
		return false
	}
	if s.ded.State().Releasable() {
		s.release()
	}
	return true
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
	s.batch.Out = nil
	return err == nil
}

func (s *session) writeClient(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.conn.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	_, err := s.conn.Write(b)
	if isTimeout(err) {
		s.log.Info().Dur("write_timeout", clientWriteTimeout).Msg("client stopped reading its replies; closing client")
		s.srv.stats.disconnects[byWriteTimeout].Add(1)
	}
	if err != nil {
		s.closeClient()
	}
	return err
}

// closeClient closes the client's connection; the session runs none of the
// client's commands after that.
func (s *session) closeClient() {
	s.closed.Store(true)
	s.conn.Close()
}

// errClientGone: the client's connection failed; nothing more is done for it.
var errClientGone = errors.New("client connection closed")

// dedicate moves the session onto a dedicated connection. Everything before
// it has been answered and written first, so commands run in the order sent.
func (s *session) dedicate() error {
	s.flushShared()
	if !s.writeOut() {
		return errClientGone
	}
	d, err := s.pool.Dedicate(context.Background(), s.proto, s.db, s.token, s.writeClient, s.upstreamFailed)
	if err != nil {
		s.log.Warn().Err(err).Msg("no dedicated upstream connection for the session")
		return err
	}
	s.ded = d
	s.dedAt.Store(d)
	if s.name != nil {
		// The name the proxy kept goes with the session.
		d.SendHidden(encode([]byte("CLIENT"), []byte("SETNAME"), s.name), upstream.EffectSetName)
	}
	return nil
}

// release gives the dedicated connection back once it has answered
// everything and holds no state of the client's; the session continues on
// the shared connections of the connection's protocol and database.
func (s *session) release() {
	st := s.ded.State()
	s.dedAt.Store(nil)
	s.ded.Release()
	s.ded = nil
	s.pin.Store(uint32(pinNone))
	s.proto, s.db = st.Proto, st.DB
	s.inMulti, s.txAborted, s.dedForLife, s.uncounted = false, false, false, false
}

// waitDedicated waits until the dedicated connection has written every reply
// owed to the client, while watching the client: one that goes away ends the
// wait (false), and its dedicated connection is then closed, so Redis
// unblocks whatever it waited on and nothing is consumed for nobody.
func (s *session) waitDedicated() bool {
	if s.ded.Idle() {
		return true
	}
	filled := make(chan error, 1)
	fill := func() { filled <- s.watchClient() }
	go fill()
	ok := true
	drained := s.srv.drained
	for ok && !s.ded.Idle() {
		select {
		case <-s.ded.Quiet():
		case <-s.ded.Exited():
			ok = s.ded.Idle()
		case <-drained:
			// The proxy is shutting down: a command blocked in Redis is
			// unblocked (the client gets Redis's UNBLOCKED error, nothing is
			// consumed); any other reply is waited for.
			drained = nil
			s.pool.Exchange(2, 0, encode([]byte("CLIENT"), []byte("UNBLOCK"), strconv.AppendInt(nil, s.ded.ID(), 10), []byte("ERROR")))
		case err := <-filled:
			switch {
			case err == nil:
				go fill()
			case errors.Is(err, resp.ErrBufferFull), isTimeout(err) && s.srv.draining.Load():
				filled = nil // keep waiting, read nothing more
			default:
				filled, ok = nil, false // the client is gone
			}
		}
	}
	if filled != nil {
		s.conn.SetReadDeadline(time.Now())
		<-filled
		s.conn.SetReadDeadline(time.Time{})
	}
	return ok
}

// upstreamFailed runs when the dedicated connection fails (err) or Redis
// closed it after QUIT (nil): the client's connection state is gone, so its
// connection is closed, as Redis would close it.
func (s *session) upstreamFailed(err error) {
	switch {
	case s.killed.Load(): // logged by kill
	case clientType(s.kind.Load()) == typeReplica:
		s.log.Info().AnErr("reason", err).Msg("Redis ended the replication stream; closing client")
	case err != nil:
		s.log.Warn().Err(err).Msg("dedicated upstream connection failed; closing client")
	}
	s.closeClient()
}

// outputOverflow disconnects a client whose unread replies passed
// limits.client_output_buffer. It runs on a shared connection's reader,
// which goes on at once: nobody else waits for this client.
func (s *session) outputOverflow() {
	s.srv.stats.disconnects[byOutputBuffer].Add(1)
	s.log.Warn().Int("client_output_buffer", s.batch.Limit).Msg("client output buffer limit reached: the client does not read its replies; closing client")
	s.closeClient()
}

// drainEnd ends the session for the drain, once the replies owed on its
// dedicated connection have reached the client (a blocked command is
// unblocked: see waitDedicated).
func (s *session) drainEnd() {
	s.srv.stats.disconnects[byDrain].Add(1)
	if s.ded != nil && s.ded.Flush() == nil {
		s.waitDedicated()
	}
}

// wake ends the session's wait for its client's next request (the drain).
func (s *session) wake() { s.conn.SetReadDeadline(time.Now()) }

// readTimedOut ends a session whose read timed out: drained, or idle for
// limits.idle_timeout.
func (s *session) readTimedOut() {
	if s.srv.draining.Load() {
		s.drainEnd()
		return
	}
	s.srv.stats.disconnects[byIdleTimeout].Add(1)
	s.log.Debug().Dur("idle_timeout", s.srv.limits.Load().IdleTimeout).Msg("idle client closed (limits.idle_timeout)")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *session) readFailed(err error) {
	var pe *resp.ProtocolError
	switch {
	case errors.As(err, &pe):
		s.log.Info().Str("reason", pe.Msg).Msg("client protocol error; closing client")
		s.reply(redcon.AppendError(nil, "ERR "+pe.Msg))
	case errors.Is(err, resp.ErrRequestTooLarge):
		s.log.Warn().Int("max_request_bytes", s.srv.cfg.Listen.MaxRequestBytes).Msg("request too large; closing client")
		s.reply(redcon.AppendError(nil, "ERR Protocol error: request larger than listen.max_request_bytes"))
	default:
		return // the connection closed or failed: nothing to answer
	}
	if s.ded != nil {
		// Answer what came before the bad request, as Redis does.
		s.ded.Flush()
		s.waitDedicated()
	}
	s.writeOut()
}

// watchClient reads from the client once while the session waits, so that a
// client that goes away is noticed (an error other than resp.ErrBufferFull).
// What it reads is kept for the next requests; after a bad request nothing
// more is, and the read only watches.
func (s *session) watchClient() error {
	err := s.rd.Fill()
	var pe *resp.ProtocolError
	if !errors.As(err, &pe) && !errors.Is(err, resp.ErrRequestTooLarge) {
		return err
	}
	var discard [512]byte
	_, err = s.conn.Read(discard[:])
	if isTimeout(err) {
		return nil
	}
	return err
}

func (s *session) end() {
	// Closing the client first wakes a dedicated reader blocked writing to it.
	s.conn.Close()
	if s.ded != nil {
		s.dedAt.Store(nil)
		s.ded.Release()
		s.ded = nil
	}
	s.srv.ids.Delete(s.clientID)
	s.srv.stats.active.Add(-1)
	s.rd.Release()
	s.log.Debug().Msg("session ended")
}
