package proxy

import (
	"bytes"
	"math"
	"strconv"
	"time"

	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// CLIENT KILL and CLIENT UNBLOCK name connections. Through the proxy a
// client may name only a client of the proxy: by the session's own id and
// address (CLIENT ID, CLIENT INFO), or by the id and address Redis's CLIENT
// LIST shows for that session's dedicated connection. A shared connection
// carries many clients' commands and is never touched.

const (
	errKillNoTarget  = "ERR CLIENT KILL through tlsproxy needs an ID or ADDR filter naming one client: the other filters alone would match connections the proxy shares between clients"
	errKillShared    = "ERR CLIENT KILL through tlsproxy cannot name a shared connection: it carries the commands of many clients"
	errUnblockShared = "ERR CLIENT UNBLOCK through tlsproxy cannot name a shared connection: it carries the commands of many clients"
	errKillInMulti   = "ERR CLIENT KILL and CLIENT UNBLOCK are not available inside a transaction through tlsproxy"
)

// clientType is what CLIENT KILL's TYPE filter sees of a session.
type clientType uint32

const (
	typeNormal clientType = iota
	typePubSub
	typeReplica
)

// unmatchedID is a client id no Redis connection has: Redis numbers its
// clients from 1 up, and never reaches it.
const unmatchedID = math.MaxInt64

// killFilter is CLIENT KILL's filters, as Redis reads them: each later
// value of a filter replaces the earlier one.
type killFilter struct {
	legacy bool // CLIENT KILL <addr>
	id     int64
	addr   string
	laddr  string
	typ    string
	user   string
	maxAge int64
	skipMe bool
	other  string // a filter Redis accepted that the proxy does not know
}

// clientKill serves CLIENT KILL. Redis checks the syntax first (on a copy
// that matches no connection), so malformed forms get Redis's own errors;
// then the proxy finds the client named and checks the other filters
// against it.
func (s *session) clientKill(req resp.Request) bool {
	args := req.Args
	if msg := s.namingRefusal(args); msg != "" {
		s.replyError(msg)
		return true
	}
	if s.redisMayRefuse() {
		s.send(encode(noMatchKill(args)...), upstream.EffectNone, 0)
		return true
	}
	if !s.settle() {
		return false
	}
	f := killFilter{legacy: len(args) == 3}
	if f.legacy {
		f.addr = string(args[2])
	} else {
		if reply, ok := s.ask(encode(noMatchKill(args)...)); !ok || reply[0] != ':' {
			if ok {
				s.reply(reply)
			}
			return true
		}
		f = parseKillFilter(args)
	}
	switch {
	case f.other != "":
		s.replyError("ERR CLIENT KILL filter " + f.other + " is not supported through tlsproxy")
		return true
	case f.id == 0 && f.addr == "":
		s.replyError(errKillNoTarget)
		return true
	case s.srv.isShared(f.id, f.addr):
		s.replyError(errKillShared)
		return true
	}
	killed, self := 0, false
	s.srv.ids.Range(func(_, v any) bool {
		t := v.(*session)
		if !t.matches(&f) || t == s && f.skipMe {
			return true
		}
		killed++
		if t == s {
			self = true
		} else {
			t.kill(s)
		}
		return true
	})
	if self {
		s.killSelf()
	}
	switch {
	case !f.legacy:
		s.reply(redcon.AppendInt(nil, int64(killed)))
	case killed == 0:
		s.replyError("ERR No such client")
	default:
		s.reply([]byte("+OK\r\n"))
	}
	return !self // a client that killed itself gets the reply, then is closed
}

// noMatchKill is a copy of a CLIENT KILL that Redis checks as it checks the
// original, but that matches no connection: the last filter wins in Redis,
// and ID unmatchedID names no one. With an odd number of arguments Redis
// refuses the command whatever it says, so it stays as it is; the old form
// gets an address no client connects from.
func noMatchKill(args [][]byte) [][]byte {
	switch {
	case len(args) == 3:
		return [][]byte{args[0], args[1], []byte("0.0.0.0:0")}
	case len(args)%2 == 1:
		return args
	}
	return append(args[:len(args):len(args)], []byte("ID"), []byte(strconv.FormatInt(unmatchedID, 10)))
}

// namingRefusal is the error a CLIENT KILL or UNBLOCK gets before anything
// else: Redis's arity error, or the proxy's refusal inside MULTI; "" if none.
func (s *session) namingRefusal(args [][]byte) string {
	if msg := arityError(args); msg != "" {
		return msg
	}
	if s.inMulti {
		return errKillInMulti
	}
	return ""
}

// redisMayRefuse reports whether Redis may refuse any command on the
// session's dedicated connection (a RESP2 subscriber: the proxy counts
// neither subscriptions nor which HELLO Redis accepted once replies are
// uncounted), so that only Redis can answer.
func (s *session) redisMayRefuse() bool {
	return s.ded != nil && s.uncounted
}

func parseKillFilter(args [][]byte) killFilter {
	f := killFilter{skipMe: true}
	for i := 2; i+1 < len(args); i += 2 {
		v := args[i+1]
		switch name := args[i]; {
		case commands.Keyword(name, "id"):
			f.id, _ = resp.ParseInt(v)
		case commands.Keyword(name, "addr"):
			f.addr = string(v)
		case commands.Keyword(name, "laddr"):
			f.laddr = string(v)
		case commands.Keyword(name, "type"):
			f.typ = string(bytes.ToLower(v))
			if f.typ == "slave" {
				f.typ = "replica"
			}
		case commands.Keyword(name, "user"):
			f.user = string(v)
		case commands.Keyword(name, "skipme"):
			f.skipMe = commands.Keyword(v, "yes")
		case commands.Keyword(name, "maxage"):
			f.maxAge, _ = resp.ParseInt(v)
		default:
			f.other = string(name)
		}
	}
	return f
}

// matches reports whether the session is a client CLIENT KILL's filters
// name. Its id and address are its own or its dedicated connection's.
func (t *session) matches(f *killFilter) bool {
	d := t.dedAt.Load()
	either := func(want, own string, ded func(*upstream.Dedicated) string) bool {
		return want == "" || want == own || d != nil && want == ded(d)
	}
	switch {
	case f.id != 0 && f.id != t.clientID && (d == nil || f.id != d.ID()):
		return false
	case !either(f.addr, t.addr, (*upstream.Dedicated).Addr):
		return false
	case !either(f.laddr, t.laddr, (*upstream.Dedicated).RedisAddr):
		return false
	case f.typ != "" && f.typ != t.typeName():
		return false
	case f.user != "" && f.user != *t.user.Load():
		return false
	case f.maxAge > 0 && int64(time.Since(t.started)/time.Second) < f.maxAge:
		return false
	}
	return true
}

// typeName is the session's type as CLIENT KILL TYPE names it ("slave" is
// Redis's other name for "replica").
func (t *session) typeName() string {
	switch clientType(t.kind.Load()) {
	case typePubSub:
		return "pubsub"
	case typeReplica:
		return "replica"
	}
	return "normal"
}

// kill ends another session, as Redis frees a killed client: its
// dedicated connection is closed, and killed in Redis too, so that when the
// killer gets its reply Redis has freed it (blocked command, subscriptions
// and all); then the client's connection is closed.
func (t *session) kill(by *session) {
	t.killed.Store(true)
	t.srv.stats.disconnects[byKill].Add(1)
	t.log.Info().Int64("killed_by", by.clientID).Msg("client killed by CLIENT KILL")
	if d := t.dedAt.Load(); d != nil {
		by.killDedicated(d)
	}
	t.closeClient()
}

// killSelf ends the session's own dedicated connection, after every reply
// owed on it (settle); the session ends once its reply is written.
func (s *session) killSelf() {
	s.log.Info().Msg("client killed itself with CLIENT KILL")
	if s.ded == nil {
		return
	}
	s.killDedicated(s.ded)
	s.dedAt.Store(nil)
	s.ded.Release()
	s.ded = nil
}

// killDedicated closes d unless it was released, then kills it in Redis by
// its id (over s's shared connection), so Redis has freed the client when
// this returns. A connection closed here never goes back to the pool, so
// its id names no one else's.
func (s *session) killDedicated(d *upstream.Dedicated) {
	if d.Kill() {
		s.pool.Exchange(s.proto, s.db, encode([]byte("CLIENT"), []byte("KILL"), []byte("ID"),
			strconv.AppendInt(nil, d.ID(), 10), []byte("SKIPME"), []byte("no")))
	}
}

// clientUnblock serves CLIENT UNBLOCK: forwarded, with the id of the
// dedicated connection of the client named, while that connection is held
// (it cannot go back to the pool and to someone else meanwhile).
func (s *session) clientUnblock(req resp.Request) bool {
	args := req.Args
	if msg := s.namingRefusal(args); msg != "" {
		s.replyError(msg)
		return true
	}
	id, ok := resp.ParseInt(args[2])
	valid := ok && (len(args) == 3 || len(args) == 4 && (commands.Keyword(args[3], "timeout") || commands.Keyword(args[3], "error")))
	if s.redisMayRefuse() {
		fwd := req.Raw
		if valid {
			fwd = encode(append([][]byte{args[0], args[1], []byte(strconv.FormatInt(unmatchedID, 10))}, args[3:]...)...)
		}
		s.send(fwd, upstream.EffectNone, 0)
		return true
	}
	if !s.settle() {
		return false
	}
	if !valid {
		// Redis refuses it before it looks for a client: its own error.
		if reply, ok := s.ask(req.Raw); ok {
			s.reply(reply)
		}
		return true
	}
	if s.srv.isShared(id, "") {
		s.replyError(errUnblockShared)
		return true
	}
	d := s.srv.dedicatedNamed(id)
	if d == nil || !d.Hold() {
		s.reply([]byte(":0\r\n")) // no such client, or none blocked
		return true
	}
	fwd := append([][]byte{args[0], args[1], []byte(strconv.FormatInt(d.ID(), 10))}, args[3:]...)
	reply, ok := s.ask(encode(fwd...))
	d.Unhold()
	if ok {
		s.reply(reply)
	}
	return true
}

// settle sends what the session queued and waits for every reply owed on its
// dedicated connection, so a CLIENT KILL or UNBLOCK acts after the commands
// sent before it.
func (s *session) settle() bool {
	s.flushShared()
	if s.ded == nil {
		return true
	}
	return s.ded.Flush() == nil && s.waitDedicated()
}

// ask sends one command of the session's on a shared connection and returns
// Redis's reply; when Redis cannot be reached the client gets the error and
// ok is false.
func (s *session) ask(cmd []byte) (reply []byte, ok bool) {
	reply, err := s.pool.Exchange(s.proto, s.db, cmd)
	if err != nil {
		s.replyError(unavailable(err))
		return nil, false
	}
	return reply, true
}
