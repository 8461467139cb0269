package proxy

import (
	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// The commands here change what a client connection is in Redis (its
// protocol, its name, its tracking and reply modes). Client libraries send
// HELLO, SELECT and CLIENT SETNAME on every connection, so the proxy keeps
// that state itself while the session uses shared connections, instead of
// spending a dedicated connection on each client.

// hello serves HELLO. Without AUTH, it runs on a shared connection of the
// protocol asked for, where it changes nothing, and the reply's id is the
// session's own: the shared connection's id is not the client's to know.
// SETNAME is kept by the proxy.
func (s *session) hello(req resp.Request) bool {
	h, errText := commands.ParseHello(req.Args)
	if s.ded != nil {
		e, proto := upstream.EffectHello, h.Proto
		switch {
		case errText != "":
			e = upstream.EffectNone
		case h.HasAuth:
			e = upstream.EffectSticky
		case h.SetName != nil:
			s.name = nonEmpty(h.SetName)
			e = upstream.EffectSetName
		}
		if errText == "" && proto != 0 {
			s.proto = proto
		}
		s.send(req.Raw, e, proto)
		return true
	}
	if h.HasAuth {
		return s.helloAuth(h, errText)
	}
	if errText != "" {
		if h.SetName != nil {
			s.name = nonEmpty(h.SetName) // Redis applies options as it reads them
		}
		s.replyError(errText)
		return true
	}
	proto := h.Proto
	if proto == 0 {
		proto = s.proto
	}
	s.flushShared()
	old := s.proto
	s.proto = proto
	start := len(s.out)
	s.queue(helloCmd[proto-2])
	s.flushShared()
	if len(s.out) > start && s.out[start] == '-' {
		s.proto = old // Redis refused: nothing changed
		return true
	}
	if h.SetName != nil {
		s.name = nonEmpty(h.SetName)
	}
	s.out = append(s.out[:start], setConnID(s.out[start:], s.clientID)...)
	return true
}

var helloCmd = [2][]byte{[]byte("*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n"), []byte("*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")}

func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// clientName serves CLIENT SETNAME, GETNAME and SETINFO from the session:
// the name belongs to the client, not to the shared connection it borrows.
func (s *session) clientName(route commands.Route, req resp.Request) {
	args := req.Args
	if s.ded != nil {
		e := upstream.EffectNone
		if route == commands.ClientSetName && arityError(args) == "" && commands.ValidClientName(args[2]) {
			s.name, e = nonEmpty(args[2]), upstream.EffectSetName
		}
		s.send(req.Raw, e, 0)
		return
	}
	if route == commands.ClientSetInfo && commands.Lookup([]byte("client")).Sub(args[1]) == nil {
		// This Redis has no CLIENT SETINFO: answer as it does.
		s.replyError("ERR unknown subcommand '" + truncate(string(args[1]), 128) + "'. Try CLIENT HELP.")
		return
	}
	if msg := arityError(args); msg != "" {
		s.replyError(msg)
		return
	}
	switch route {
	case commands.ClientSetName:
		if !commands.ValidClientName(args[2]) {
			s.replyError("ERR Client names cannot contain spaces, newlines or special characters.")
			return
		}
		s.name = nonEmpty(args[2])
		s.reply([]byte("+OK\r\n"))
	case commands.ClientGetName:
		switch {
		case s.name != nil:
			s.reply(redcon.AppendBulk(nil, s.name))
		case s.proto == 3:
			s.reply([]byte("_\r\n"))
		default:
			s.reply([]byte("$-1\r\n"))
		}
	default:
		s.reply([]byte("+OK\r\n"))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// tracking serves CLIENT TRACKING. Turning it on needs a dedicated
// connection (Redis pushes invalidations to it) for the rest of the session;
// a REDIRECT must name a connection some client holds, never a shared one.
func (s *session) tracking(req resp.Request) bool {
	t, errText := commands.ParseTracking(req.Args)
	if t.HasRedirect && t.Redirect != 0 {
		target := s.redirectTarget(t.Redirect)
		if target == 0 {
			s.replyError(errRedirectOther)
			return true
		}
		if target != t.Redirect {
			req.Raw = withRedirect(req.Args, target)
		}
	}
	if errText != "" {
		s.replyError(errText)
		return true
	}
	if !t.On && s.ded == nil {
		s.reply([]byte("+OK\r\n")) // off on a connection that never had it
		return true
	}
	return s.onDedicated(req, upstream.EffectSticky, failCommand)
}

var replyEffects = map[commands.ReplyMode]upstream.Effect{
	commands.ReplyOn:   upstream.EffectReplyOn,
	commands.ReplyOff:  upstream.EffectReplyOff,
	commands.ReplySkip: upstream.EffectReplySkip,
}

// clientReply serves CLIENT REPLY. OFF and SKIP leave replies that can no
// longer be counted: a dedicated connection for the rest of the session.
func (s *session) clientReply(req resp.Request) bool {
	m, errText := commands.ParseReply(req.Args)
	switch {
	case s.ded != nil:
	case errText != "":
		s.replyError(errText)
		return true
	case m == commands.ReplyOn:
		s.reply([]byte("+OK\r\n"))
		return true
	}
	e := upstream.EffectNone // Redis answers an error and changes nothing
	if errText == "" {
		e = replyEffects[m]
	}
	return s.onDedicated(req, e, failCommand)
}
