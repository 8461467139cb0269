package proxy

import (
	"bytes"
	"slices"
	"strconv"

	"github.com/tidwall/redcon"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// sessionIDBase starts the ids the proxy gives its sessions (CLIENT ID,
// HELLO's id, CLIENT INFO's id=). Redis numbers its connections from 1 up,
// so ids from 2^48 on name no Redis connection: a client that learns one can
// reach no other client's connection with it. A session holds the same id
// whichever upstream connection it uses, as a client keeps its id in Redis.
const sessionIDBase = 1 << 48

// answerClientID answers CLIENT ID with the session's id. Where Redis would
// not answer at once (inside MULTI it queues the command; a RESP2 subscribed
// connection refuses it) it gets the command, and answers.
func (s *session) answerClientID(req resp.Request) {
	if s.ded != nil && (s.uncounted || s.inMulti) {
		s.send(req.Raw, upstream.EffectNone, 0)
		return
	}
	if msg := arityError(req.Args); msg != "" {
		s.replyError(msg)
		return
	}
	s.reply(redcon.AppendInt(nil, s.clientID))
}

// clientInfo serves CLIENT INFO: on the dedicated connection as it is; on a
// shared connection (it then describes that connection: its database,
// protocol and user are the session's) with the session's id and name.
func (s *session) clientInfo(req resp.Request) {
	if s.ded != nil {
		s.send(req.Raw, upstream.EffectNone, 0)
		return
	}
	s.flushShared()
	start := len(s.out)
	s.queue(req.Raw)
	s.flushShared()
	if info := s.out[start:]; len(info) > 0 && (info[0] == '$' || info[0] == '=') {
		s.out = append(s.out[:start], s.ownInfo(info)...)
	}
}

// ownInfo rewrites the id=, name=, addr= and laddr= fields of a CLIENT INFO
// reply (a bulk or RESP3 verbatim string) to the session's: its address is
// the client's, as the proxy sees it.
func (s *session) ownInfo(reply []byte) []byte {
	head := bytes.IndexByte(reply, '\n')
	if head < 0 || len(reply) < head+3 {
		return reply
	}
	body := reply[head+1 : len(reply)-2]
	prefix := []byte(nil)
	if reply[0] == '=' && len(body) >= 4 {
		prefix, body = body[:4], body[4:] // "txt:"
	}
	fields := bytes.Split(bytes.TrimRight(body, "\n"), []byte(" "))
	for i, f := range fields {
		switch {
		case bytes.HasPrefix(f, []byte("id=")):
			fields[i] = strconv.AppendInt([]byte("id="), s.clientID, 10)
		case bytes.HasPrefix(f, []byte("name=")):
			fields[i] = append([]byte("name="), s.name...)
		case bytes.HasPrefix(f, []byte("addr=")):
			fields[i] = []byte("addr=" + s.addr)
		case bytes.HasPrefix(f, []byte("laddr=")):
			fields[i] = []byte("laddr=" + s.laddr)
		}
	}
	line := append(append(append([]byte(nil), prefix...), bytes.Join(fields, []byte(" "))...), '\n')
	out := []byte{reply[0]}
	out = strconv.AppendInt(out, int64(len(line)), 10)
	out = append(out, '\r', '\n')
	out = append(out, line...)
	return append(out, '\r', '\n')
}

// setConnID returns a HELLO reply (RESP2 array or RESP3 map) with the value
// of its "id" field replaced by id.
func setConnID(reply []byte, id int64) []byte {
	key := []byte("$2\r\nid\r\n:")
	i := bytes.Index(reply, key)
	if i < 0 {
		return reply
	}
	i += len(key)
	j := bytes.IndexByte(reply[i:], '\r')
	if j < 0 {
		return reply
	}
	out := strconv.AppendInt(append([]byte(nil), reply[:i]...), id, 10)
	return append(out, reply[i+j:]...)
}

// redirectTarget resolves the connection a CLIENT TRACKING REDIRECT names
// to its Redis id (see dedicatedNamed); 0 for anything else (a shared or
// idle connection, or a session without a dedicated one).
func (s *session) redirectTarget(id int64) int64 {
	if d := s.srv.dedicatedNamed(id); d != nil {
		return d.ID()
	}
	return 0
}

// dedicatedNamed is the dedicated connection id names: the one of the
// session with that id, or the one some session holds with that Redis id;
// nil for anything else. Clients may name only these (CLIENT TRACKING
// REDIRECT, CLIENT UNBLOCK).
func (srv *Server) dedicatedNamed(id int64) *upstream.Dedicated {
	if v, ok := srv.ids.Load(id); ok {
		return v.(*session).dedAt.Load()
	}
	var d *upstream.Dedicated
	srv.ids.Range(func(_, v any) bool {
		if td := v.(*session).dedAt.Load(); td != nil && td.ID() == id {
			d = td
		}
		return d == nil
	})
	return d
}

// withRedirect returns CLIENT TRACKING's arguments with the REDIRECT value
// set to id, found by Redis's option syntax, encoded as a command.
func withRedirect(args [][]byte, id int64) []byte {
	last := -1 // Redis takes the last REDIRECT
	for j := 3; j < len(args); j++ {
		switch {
		case commands.Keyword(args[j], "redirect") && j+1 < len(args):
			last = j + 1
			j++
		case commands.Keyword(args[j], "prefix"):
			j++
		}
	}
	args = slices.Clone(args)
	if last > 0 {
		args[last] = strconv.AppendInt(nil, id, 10)
	}
	return encode(args...)
}
