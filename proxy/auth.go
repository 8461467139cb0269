package proxy

import (
	"crypto/sha256"
	"errors"

	"github.com/tidwall/redcon"

	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// A client's AUTH (or HELLO … AUTH) does not cost a dedicated connection:
// the session moves to the shared connections of a pool whose connections
// log in as that user, made on first use. Redis itself checks every AUTH,
// on a shared connection of that pool: a successful AUTH there changes
// nothing (the connection is already that user), a failed one changes
// nothing either (Redis keeps a connection's user when AUTH fails), and the
// client gets Redis's own answer. A session whose AUTH cannot be checked
// (Redis unreachable) is closed: it never goes on as the proxy's own user.

// maxAuthRefusals is how many AUTHs with credentials Redis refuses on a new
// connection a session may send; the next one closes it (a brute force
// through the proxy would otherwise cost Redis a connection per guess).
const maxAuthRefusals = 3

// userPool returns the pool whose connections log in as user with
// password: the configured one, or one made for clients' AUTH, shared by
// every session that presented the same credentials (so a thousand clients
// logging in at once make one pool, not a thousand).
func (s *Server) userPool(user, password string) (p *upstream.Pool, key string) {
	if user == s.pool.User() && password == s.pool.Password() {
		return s.pool, ""
	}
	sum := sha256.Sum256([]byte(password))
	key = user + "\x00" + string(sum[:])
	if v, ok := s.users.Load(key); ok {
		return v.(*upstream.Pool), key
	}
	fresh := s.pool.ForUser(user, password)
	v, loaded := s.users.LoadOrStore(key, fresh)
	if loaded {
		fresh.Close()
	}
	return v.(*upstream.Pool), key
}

// dropUserPool forgets a pool whose credentials Redis refused.
func (s *Server) dropUserPool(key string, p *upstream.Pool) {
	if key != "" && s.users.CompareAndDelete(key, p) {
		p.Close()
	}
}

// isShared reports whether id or addr names a shared connection of any pool.
func (s *Server) isShared(id int64, addr string) bool {
	return s.anyPool(func(p *upstream.Pool) bool { return p.IsShared(id, addr) })
}

// upstreamConns counts the connections to Redis of every pool (see
// upstream.Pool.Conns).
func (s *Server) upstreamConns() (shared, pinned, idle int) {
	s.anyPool(func(p *upstream.Pool) bool {
		sh, pi, id := p.Conns()
		shared, pinned, idle = shared+sh, pinned+pi, idle+id
		return false
	})
	return shared, pinned, idle
}

func (s *Server) anyPool(f func(*upstream.Pool) bool) bool {
	found := f(s.pool)
	s.users.Range(func(_, v any) bool {
		found = found || f(v.(*upstream.Pool))
		return !found
	})
	return found
}

// setPool makes p the pool the session's commands use.
func (s *session) setPool(p *upstream.Pool) {
	s.pool = p
	u := p.User()
	s.user.Store(&u)
}

// authenticate serves AUTH and HELLO … AUTH on shared connections. cmd is
// what is sent to Redis (HELLO without its SETNAME); proto the protocol the
// session speaks afterwards. It returns false when the session must end.
func (s *session) authenticate(user, password []byte, cmd []byte, proto int) (reply []byte, ok bool) {
	name := "default"
	if user != nil {
		name = string(user)
	}
	p, key := s.srv.userPool(name, string(password))
	out, err := p.Exchange(proto, s.db, cmd)
	var re *upstream.ReplyError
	switch {
	case err == nil && out[0] != '-':
		s.setPool(p)
		return out, true
	case err == nil:
		return out, true // Redis refused: the session stays as it was
	case errors.As(err, &re) && (re.Command == "AUTH" || re.Command == "HELLO"):
		// Redis refused these credentials on a new connection. Each such
		// attempt costs Redis a connection, so a session gets a few.
		s.srv.dropUserPool(key, p)
		s.authRefusals++
		if s.authRefusals > maxAuthRefusals {
			s.log.Warn().Str("user", name).Int("refused", s.authRefusals).Msg("too many refused AUTH attempts; closing client")
			return []byte("-" + re.Reply + "\r\n"), false
		}
		return []byte("-" + re.Reply + "\r\n"), true
	}
	s.log.Warn().Err(err).Str("user", name).Msg("cannot check the client's AUTH; closing client")
	return []byte("-" + unavailable(err) + "\r\n"), false
}

// auth serves AUTH [user] password.
func (s *session) auth(req resp.Request) bool {
	if s.ded != nil {
		s.send(req.Raw, upstream.EffectSticky, 0)
		return true
	}
	args := req.Args
	if msg := arityError(args); msg != "" || len(args) > 3 {
		if msg == "" {
			msg = "ERR syntax error"
		}
		s.replyError(msg)
		return true
	}
	var user []byte
	if len(args) == 3 {
		user = args[1]
	}
	s.flushShared()
	out, ok := s.authenticate(user, args[len(args)-1], req.Raw, s.proto)
	s.out = append(s.out, out...)
	return ok
}

// helloAuth serves HELLO with AUTH on shared connections. Redis applies
// HELLO's options as it reads them, so a HELLO whose AUTH precedes a bad
// option (errText) still logs the client in.
func (s *session) helloAuth(h commands.HelloOptions, errText string) bool {
	if errText != "" {
		s.flushShared()
		out, ok := s.authenticate(h.User, h.Pass, authCmd(h.User, h.Pass), s.proto)
		if ok && out[0] != '-' {
			if h.SetName != nil {
				s.name = nonEmpty(h.SetName)
			}
			out = redcon.AppendError(nil, errText)
		}
		s.out = append(s.out, out...)
		return ok
	}
	proto := h.Proto
	if proto == 0 {
		proto = s.proto
	}
	cmd := helloAuthCmd(proto, h.User, h.Pass)
	s.flushShared()
	out, ok := s.authenticate(h.User, h.Pass, cmd, proto)
	if ok && out[0] != '-' {
		s.proto = proto
		if h.SetName != nil {
			s.name = nonEmpty(h.SetName)
		}
		out = setConnID(out, s.clientID)
	}
	s.out = append(s.out, out...)
	return ok
}

func authCmd(user, pass []byte) []byte {
	return encode([]byte("AUTH"), user, pass)
}

func helloAuthCmd(proto int, user, pass []byte) []byte {
	return encode([]byte("HELLO"), []byte{byte('0' + proto)}, []byte("AUTH"), user, pass)
}
