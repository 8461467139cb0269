package proxy

// route says which upstream connection a command may use. Every command is
// classified here, before it is forwarded; see the README's "Command
// behaviour" section for the decisions and the reasons.
type route uint8

const (
	// routeShared: stateless; any shared, multiplexed connection will do.
	routeShared route = iota
	// routeHello: HELLO without AUTH or SETNAME; switches the session's
	// protocol, so it travels on a shared connection of the new protocol.
	routeHello
	// routeSelect: shared when it selects the default database, else sticky.
	routeSelect
	// routeSticky: leaves state on the connection for the rest of the
	// session (AUTH, CLIENT SETNAME, READONLY, ...).
	routeSticky
	// routeMulti and routeWatch: pin until EXEC, DISCARD (or UNWATCH).
	routeMulti
	routeWatch
	// routeEndTx: EXEC and DISCARD end a transaction and any WATCH.
	routeEndTx
	// routeUnwatch: UNWATCH ends WATCH.
	routeUnwatch
	// routeBlocking: may block; runs on a dedicated connection so it never
	// stalls other clients, and leaves no state.
	routeBlocking
	// routePush: from now on Redis may send data nobody asked for
	// (subscriptions, MONITOR, tracking, CLIENT REPLY OFF|SKIP).
	routePush
	// routeWait: WAIT and WAITAOF count the connection's own writes.
	routeWait
	routeQuit
	routeReset
	// routeDeny: refused with an error, never forwarded.
	routeDeny
)

// denied explains refusals; the key is the lower-case command (or
// "command subcommand").
var denied = map[string]string{
	"client kill": "ERR CLIENT KILL is not available through tlsproxy: connections to Redis are shared by many clients",
	"sync":        "ERR replication commands are not available through tlsproxy",
	"psync":       "ERR replication commands are not available through tlsproxy",
	"replconf":    "ERR replication commands are not available through tlsproxy",
	"wait":        "ERR WAIT counts this connection's writes, which went over a connection shared with other clients; it is only available through tlsproxy once the session is pinned (after WATCH, MULTI, CLIENT SETNAME, ...)",
}

// classify returns the route of a command. It allocates nothing.
func classify(args [][]byte) route {
	var buf [24]byte
	switch string(lower(buf[:], args[0])) {
	case "hello":
		for i := 2; i < len(args); i++ {
			var b [8]byte
			if opt := string(lower(b[:], args[i])); opt == "auth" || opt == "setname" {
				return routeSticky
			}
		}
		return routeHello
	case "select":
		return routeSelect
	case "auth", "readonly", "asking":
		return routeSticky
	case "multi":
		return routeMulti
	case "watch":
		return routeWatch
	case "exec", "discard":
		return routeEndTx
	case "unwatch":
		return routeUnwatch
	case "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax", "bzmpop":
		return routeBlocking
	case "xread", "xreadgroup":
		if hasBlockOption(args) {
			return routeBlocking
		}
		return routeShared
	case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe", "monitor":
		return routePush
	case "wait", "waitaof":
		return routeWait
	case "quit":
		return routeQuit
	case "reset":
		return routeReset
	case "sync", "psync", "replconf":
		return routeDeny
	case "client":
		if len(args) < 2 {
			return routeShared // Redis answers with the arity error
		}
		return classifyClient(args)
	}
	return routeShared
}

func classifyClient(args [][]byte) route {
	var buf [16]byte
	switch string(lower(buf[:], args[1])) {
	case "kill":
		return routeDeny
	case "setname", "no-evict", "no-touch", "id", "info", "getredir", "trackinginfo", "caching":
		return routeSticky
	case "tracking", "reply":
		// Turning tracking off or replies on again changes nothing on a
		// connection that never had them.
		if len(args) > 2 {
			var b [4]byte
			if mode := string(lower(b[:], args[2])); mode == "off" && isTracking(args) || mode == "on" && !isTracking(args) {
				return routeShared
			}
		}
		return routePush
	}
	return routeShared
}

func isTracking(args [][]byte) bool {
	var b [8]byte
	return string(lower(b[:], args[1])) == "tracking"
}

// hasBlockOption reports whether XREAD/XREADGROUP has a BLOCK option before
// its STREAMS keyword.
func hasBlockOption(args [][]byte) bool {
	for _, a := range args[1:] {
		var b [8]byte
		switch string(lower(b[:], a)) {
		case "block":
			return true
		case "streams":
			return false
		}
	}
	return false
}

// denyReason is the error line for a refused command.
func denyReason(args [][]byte) string {
	var buf [24]byte
	name := string(lower(buf[:], args[0]))
	if name == "client" {
		return denied["client kill"]
	}
	if name == "waitaof" {
		name = "wait"
	}
	return denied[name]
}

// lower writes the ASCII lower case of s into buf. A name longer than buf
// comes back empty, which matches no known command.
func lower(buf []byte, s []byte) []byte {
	if len(s) > len(buf) {
		return nil
	}
	for i, c := range s {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(s)]
}
