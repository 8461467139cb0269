package proxy

import (
	"bytes"

	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// Replication through the proxy: a replica (or redis-cli --rdb/--replica)
// sends REPLCONF, then SYNC or PSYNC, on its connection. They go on the
// session's dedicated connection; once Redis accepts SYNC/PSYNC, the
// connection carries the replication stream (the RDB, then every write),
// and the proxy copies bytes both ways, unparsed, until either side closes.

const errReplicateUncounted = "ERR SYNC and PSYNC through tlsproxy need a connection whose replies can be counted: not after SUBSCRIBE, MONITOR, CLIENT REPLY OFF/SKIP or REPLCONF ACK"

// replconf forwards REPLCONF on the session's dedicated connection, which
// the session keeps. Redis answers REPLCONF ACK and GETACK with nothing
// (they are for replicas and masters), so after them replies are not
// counted.
func (s *session) replconf(req resp.Request) bool {
	e := upstream.EffectSticky
	if len(req.Args)%2 == 1 {
		for i := 1; i < len(req.Args); i += 2 {
			if commands.Keyword(req.Args[i], "ack") || commands.Keyword(req.Args[i], "getack") {
				e = upstream.EffectUncounted
			}
		}
	}
	return s.onDedicated(req, e, failCommand)
}

// replicate serves SYNC and PSYNC. When Redis refuses (an error reply) the
// session goes on as before; when it accepts, the session becomes a
// replication stream for the rest of its life.
func (s *session) replicate(req resp.Request) bool {
	if s.ded != nil && s.uncounted {
		s.replyError(errReplicateUncounted)
		return true
	}
	if !s.onDedicated(req, upstream.EffectReplicate, failCommand) {
		return false
	}
	if s.ded == nil {
		return true // no dedicated connection: the client got the error
	}
	if s.ded.Flush() != nil || !s.waitDedicated() {
		return false
	}
	if !s.ded.State().Streaming {
		return true
	}
	s.replicationStream(req)
	return false
}

// replicationStream copies what the client sends to Redis until either side closes;
// the dedicated connection's reader copies what Redis sends to the client.
func (s *session) replicationStream(req resp.Request) {
	s.dedForLife = true
	s.kind.Store(uint32(typeReplica))
	s.srv.stats.replication.Add(1)
	cmd := string(bytes.ToUpper(req.Args[0]))
	s.log.Info().Str("command", cmd).Int64("upstream_id", s.ded.ID()).Msg("replication stream started")
	sent := 0
	err := s.ded.WriteStream(s.rd.After(req))
	buf := make([]byte, 16<<10)
	for err == nil {
		var n int
		n, err = s.conn.Read(buf)
		if n > 0 {
			sent += n
			if werr := s.ded.WriteStream(buf[:n]); werr != nil {
				err = werr
			}
		}
	}
	s.closeClient()
	s.log.Info().Str("command", cmd).Int("bytes_to_redis", sent).AnErr("reason", err).Msg("replication stream ended")
}
