package proxy

import (
	"bytes"
	"errors"
	"math"

	"github.com/tidwall/redcon"

	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// Errors the proxy answers itself.
const (
	errNoDedicated   = "ERR upstream unavailable: no dedicated connection for this transaction; every command up to EXEC or DISCARD fails"
	errWaitShared    = "ERR WAIT counts this connection's writes, which went over a connection shared with other clients; it is only available through tlsproxy inside a session on a dedicated connection (after WATCH, MULTI, ...)"
	errRedirectOther = "ERR CLIENT TRACKING REDIRECT through tlsproxy must name a client of the proxy (its CLIENT ID) that holds a connection of its own, such as one subscribed to __redis__:invalidate"
)

// dispatch routes one request. It returns false when the session must end.
// Every command passes here: this is where policy checks and per-command
// counters belong.
func (s *session) dispatch(req resp.Request) bool {
	args := req.Args
	route, id := commands.Resolve(args)
	s.srv.stats.commands[id].Add(1)
	s.route, s.cmdID = route, uint16(id)
	if s.failTx && route != commands.Quit && route != commands.Reset {
		s.replyError(errNoDedicated)
		if route == commands.Exec || route == commands.Discard {
			s.failTx = false
		}
		return true
	}
	switch route {
	case commands.Shared:
		s.shared(req)
		return true
	case commands.Refused:
		s.replyError(commands.RefusalReason(args))
		return true
	case commands.ClientKill:
		return s.clientKill(req)
	case commands.ClientUnblock:
		return s.clientUnblock(req)
	case commands.Replicate:
		return s.replicate(req)
	case commands.ReplConf:
		return s.replconf(req)
	case commands.Quit:
		return s.quit(req)
	case commands.Reset:
		return s.reset(req)
	case commands.Select:
		return s.selectDB(req)
	case commands.Hello:
		return s.hello(req)
	case commands.ClientSetName, commands.ClientGetName, commands.ClientSetInfo:
		s.clientName(route, req)
		return true
	case commands.ClientID:
		s.answerClientID(req)
		return true
	case commands.ClientInfo:
		s.clientInfo(req)
		return true
	case commands.Wait:
		if s.ded == nil {
			s.replyError(errWaitShared)
			return true
		}
		s.send(req.Raw, upstream.EffectNone, 0)
		return true
	case commands.Exec, commands.Discard, commands.Unwatch:
		return s.endTx(route, req)
	case commands.Multi:
		return s.onDedicated(req, upstream.EffectMulti, failContext)
	case commands.Watch:
		return s.onDedicated(req, upstream.EffectWatch, failContext)
	case commands.Auth:
		return s.auth(req)
	case commands.Blocking:
		return s.onDedicated(req, upstream.EffectNone, failCommand)
	case commands.Subscribe:
		if commands.Keyword(args[0], "subscribe") || commands.Keyword(args[0], "psubscribe") || commands.Keyword(args[0], "ssubscribe") {
			s.kind.Store(uint32(typePubSub)) // as CLIENT KILL TYPE sees it
		}
		return s.onDedicated(req, upstream.EffectUncounted, failCommand)
	case commands.ClientTracking:
		return s.tracking(req)
	case commands.ClientReply:
		return s.clientReply(req)
	}
	// Dedicated, and anything else: state the proxy does not track, unless
	// Redis refuses a command the table does not know.
	e := upstream.EffectSticky
	if !commands.Known(args) {
		e = upstream.EffectUnknown
	}
	return s.onDedicated(req, e, failCommand)
}

// shared forwards a plain request/reply command: batched on a shared
// connection, or on the dedicated connection while the session holds one
// that still owes replies or holds state (so the command runs after them,
// in that state).
func (s *session) shared(req resp.Request) {
	if s.ded != nil {
		if !s.ded.Idle() || !s.ded.State().Releasable() {
			s.send(req.Raw, upstream.EffectNone, 0)
			return
		}
		s.release()
	}
	s.queue(req.Raw)
}

// onFailure says what a failed lease of a dedicated connection costs.
type onFailure uint8

const (
	failCommand onFailure = iota // this command gets an error
	failContext                  // this and every command up to EXEC/DISCARD
)

// onDedicated forwards a command on the session's dedicated connection,
// leasing one first if needed.
func (s *session) onDedicated(req resp.Request, e upstream.Effect, f onFailure) bool {
	if r := pinReasonOf(s.route); uint32(r) > s.pin.Load() {
		s.pin.Store(uint32(r))
	}
	if s.ded == nil {
		if err := s.dedicate(); err != nil {
			if errors.Is(err, errClientGone) {
				return false
			}
			s.replyError(unavailable(err))
			s.failTx = f == failContext
			return true
		}
	}
	if e == upstream.EffectMulti {
		s.inMulti, s.txAborted = true, false
	}
	s.send(req.Raw, e, 0)
	return true
}

// send forwards a command on the dedicated connection.
func (s *session) send(cmd []byte, e upstream.Effect, arg int) {
	switch e {
	case upstream.EffectUncounted, upstream.EffectReplyOff, upstream.EffectReplySkip:
		s.uncounted = true
		s.dedForLife = true
	case upstream.EffectSticky:
		s.dedForLife = true
	}
	s.ded.Tag = s.cmdID
	s.ded.Send(cmd, e, arg)
}

// encode writes args as a RESP command, for the commands the proxy sends
// of its own or rewrites.
func encode(args ...[]byte) []byte {
	b := redcon.AppendArray(nil, len(args))
	for _, a := range args {
		b = redcon.AppendBulk(b, a)
	}
	return b
}

// queue adds a command to the batch for the shared connections.
func (s *session) queue(cmd []byte) {
	s.batch.Cmds = append(s.batch.Cmds, cmd)
	s.batch.Tags = append(s.batch.Tags, s.cmdID)
}

func unavailable(err error) string {
	var b []byte
	b = upstream.AppendUnavailable(b, err)
	return string(b[1 : len(b)-2])
}

// endTx handles EXEC, DISCARD and UNWATCH. Without a dedicated connection
// there is no transaction and no WATCH, and Redis's answer is known.
func (s *session) endTx(route commands.Route, req resp.Request) bool {
	if s.ded == nil {
		if msg := arityError(req.Args); msg != "" {
			s.replyError(msg)
			return true
		}
		switch route {
		case commands.Exec:
			s.replyError("ERR EXEC without MULTI")
		case commands.Discard:
			s.replyError("ERR DISCARD without MULTI")
		default:
			s.reply([]byte("+OK\r\n"))
		}
		return true
	}
	switch route {
	case commands.Exec:
		if s.txAborted {
			s.send(discardCmd, upstream.EffectAbortExec, 0)
		} else {
			s.send(req.Raw, upstream.EffectExec, 0)
		}
		s.inMulti, s.txAborted = false, false
	case commands.Discard:
		s.send(req.Raw, upstream.EffectDiscard, 0)
		s.inMulti, s.txAborted = false, false
	default:
		s.send(req.Raw, upstream.EffectUnwatch, 0)
	}
	return true
}

var discardCmd = []byte("*1\r\n$7\r\nDISCARD\r\n")

// quit answers QUIT after every earlier reply, then the session ends. On a
// dedicated connection Redis itself answers and closes, in whatever mode the
// connection is (subscribed, MONITOR, CLIENT REPLY OFF).
func (s *session) quit(req resp.Request) bool {
	if s.ded == nil {
		s.flushShared()
		s.out = append(s.out, "+OK\r\n"...)
		return false
	}
	s.ded.Quit(req.Raw)
	if s.ded.Flush() == nil {
		<-s.ded.Exited()
	}
	return false
}

// reset answers RESET. The session's state goes back to what a new
// connection through the proxy has. On a dedicated connection Redis runs the
// RESET (which also ends transactions, subscriptions and MONITOR), and the
// connection is set up again before anyone else uses it.
func (s *session) reset(req resp.Request) bool {
	if msg := arityError(req.Args); msg != "" {
		s.replyError(msg)
		return true
	}
	if s.ded != nil {
		s.send(req.Raw, upstream.EffectReset, 0)
		s.ded.Sync()
		if s.ded.Flush() != nil || !s.waitDedicated() {
			return false
		}
		s.release()
	} else {
		s.flushShared()
		s.out = append(s.out, "+RESET\r\n"...)
	}
	s.proto, s.db, s.name = 2, s.srv.defaultDB, nil
	s.failTx = false
	return true
}

// selectDB serves SELECT from the shared connections of the database asked
// for, so that a client library's connect-time SELECT does not cost a
// dedicated connection. Only a valid database reaches Redis, on connections
// already in it, where SELECT changes nothing.
func (s *session) selectDB(req resp.Request) bool {
	args := req.Args
	if s.ded != nil {
		db, ok := redisInt(args)
		e := upstream.EffectSelect
		if !ok {
			e = upstream.EffectNone // Redis refuses it: nothing changes
		}
		s.send(req.Raw, e, db)
		return true
	}
	if msg := arityError(args); msg != "" {
		s.replyError(msg)
		return true
	}
	db, ok := redisInt(args)
	if !ok {
		s.replyError("ERR value is not an integer or out of range")
		return true
	}
	if err := s.pool.CheckDB(db); err != nil {
		s.replyError(err.(*upstream.ReplyError).Reply)
		return true
	}
	s.flushShared()
	old := s.db
	s.db = db
	start := len(s.out)
	s.queue(req.Raw)
	s.flushShared()
	if !bytes.HasPrefix(s.out[start:], []byte("+OK")) {
		s.db = old
		if re := selectRefusal(s.out[start:]); re != "" {
			s.out = redcon.AppendError(s.out[:start], re)
		}
	}
	return true
}

// selectRefusal turns the "upstream unavailable: SELECT: ERR DB index is out
// of range" of a failed dial into Redis's own answer to SELECT.
func selectRefusal(reply []byte) string {
	const p = "-ERR upstream unavailable: SELECT: "
	if bytes.HasPrefix(reply, []byte(p)) {
		return string(bytes.TrimRight(reply[len(p):], "\r\n"))
	}
	return ""
}

// redisInt parses args[1] as Redis parses an int argument: decimal, no sign
// but '-', no leading zeros, within 32 bits.
func redisInt(args [][]byte) (int, bool) {
	if len(args) != 2 {
		return 0, false
	}
	n, ok := resp.ParseInt(args[1])
	if !ok || n < math.MinInt32 || n > math.MaxInt32 {
		return 0, false
	}
	return int(n), true
}

// arityError is Redis's error for a command with the wrong number of
// arguments, or "".
func arityError(args [][]byte) string {
	c := commands.Lookup(args[0])
	if c != nil && len(args) > 1 {
		if sub := c.Sub(args[1]); sub != nil {
			c = sub
		}
	}
	if c == nil {
		return ""
	}
	n := len(args)
	if c.Arity > 0 && n == c.Arity || c.Arity < 0 && n >= -c.Arity {
		return ""
	}
	return "ERR wrong number of arguments for '" + c.Name + "' command"
}
