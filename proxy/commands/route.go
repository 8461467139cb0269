// Package commands is the proxy's command table, generated from a real
// Redis's COMMAND and COMMAND DOCS, and the routing decision made from it:
// which commands may travel on the shared, multiplexed upstream
// connections, and which need a connection of their own or the session's
// attention.
//
// The rule is an allowlist: a command is Shared only when the table knows
// it and nothing in its flags, its ACL categories or the overrides says it
// blocks, pushes, keeps state on the connection or acts on it.
package commands

//go:generate go run ./internal/gentable -out table_gen.go
//go:generate go run ./internal/genreadme -readme ../../README.md

import "strconv"

// Route says where a command runs.
type Route uint8

const (
	// Shared: plain request/reply: exactly one reply, no connection state,
	// never blocks, no pushes, no effect on the connection itself.
	Shared Route = iota
	// Dedicated: needs a connection of its own and may leave state the proxy
	// does not track (unknown commands and subcommands, DEBUG, SCRIPT DEBUG,
	// CLIENT ID/INFO/NO-EVICT/CACHING/PAUSE, READONLY, ASKING, ...): the
	// session keeps its dedicated connection from then on.
	Dedicated
	// Blocking: may block (BLPOP..., XREAD/XREADGROUP with BLOCK, ...) or
	// otherwise run long: a dedicated connection; no state is left once its
	// reply has arrived.
	Blocking
	// Multi, Exec, Discard, Watch and Unwatch: transactions.
	Multi
	Exec
	Discard
	Watch
	Unwatch
	// Subscribe: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and their UNSUBSCRIBEs,
	// MONITOR: Redis pushes data; dedicated for the rest of the session.
	Subscribe
	Select
	// Hello: HELLO with or without options; see ParseHello.
	Hello
	Auth
	Quit
	Reset
	ClientSetName
	ClientGetName
	ClientSetInfo
	// ClientID and ClientInfo: the session's own id, not a connection's.
	ClientID
	ClientInfo
	// ClientTracking: see ParseTracking.
	ClientTracking
	// ClientReply: CLIENT REPLY ON|OFF|SKIP.
	ClientReply
	ClientKill
	ClientUnblock
	// Wait: WAIT and WAITAOF count this connection's writes.
	Wait
	// Replicate: SYNC and PSYNC; once Redis accepts, the connection carries
	// a replication stream, not requests and replies.
	Replicate
	// ReplConf: REPLCONF, the exchange before SYNC/PSYNC.
	ReplConf
	// Refused: never forwarded; RefusalReason gives the error.
	Refused
)

var routeNames = [...]string{
	Shared: "shared", Dedicated: "dedicated", Blocking: "blocking",
	Multi: "multi", Exec: "exec", Discard: "discard", Watch: "watch", Unwatch: "unwatch",
	Subscribe: "subscribe", Select: "select", Hello: "hello", Auth: "auth", Quit: "quit", Reset: "reset",
	ClientSetName: "client-setname", ClientGetName: "client-getname", ClientSetInfo: "client-setinfo",
	ClientID: "client-id", ClientInfo: "client-info",
	ClientTracking: "client-tracking", ClientReply: "client-reply",
	ClientKill: "client-kill", ClientUnblock: "client-unblock",
	Wait: "wait", Replicate: "replicate", ReplConf: "replconf", Refused: "refused",
}

func (r Route) String() string {
	if int(r) < len(routeNames) {
		return routeNames[r]
	}
	return "Route(" + strconv.Itoa(int(r)) + ")"
}

// Classify says where a command runs. args[0] is the command's name, in
// any case, and len(args) >= 1. It allocates nothing.
func Classify(args [][]byte) Route {
	r, _ := Resolve(args)
	return r
}

// Resolve is Classify, and also returns the command's id (see NameOf): its
// subcommand's for a container command, 0 for one the table does not know
// (a container named without a subcommand counts as itself).
func Resolve(args [][]byte) (Route, int) {
	c := Lookup(args[0])
	if c == nil {
		return newer(args[0], nil), 0
	}
	if c.container && len(args) > 1 {
		sub := c.Sub(args[1])
		if sub == nil {
			return newer(args[0], args[1]), 0
		}
		c = sub
	}
	if c.byArgs != nil {
		return c.byArgs(args), c.id
	}
	return c.route, c.id
}

// newer routes a command (or subcommand) the table does not know: by its
// override when a newer Redis has it, otherwise Dedicated.
func newer(name, sub []byte) Route {
	if len(name)+1+len(sub) > maxName {
		return Dedicated
	}
	var buf [maxName]byte
	b := fold(buf[:0], name)
	if sub != nil {
		b = fold(append(b, '|'), sub)
	}
	if _, ok := newerThanTable[string(b)]; ok {
		return overrideOf[string(b)].route
	}
	return Dedicated
}

// RefusalReason is the error for a Refused command, as Redis would write it
// but without the leading '-' and the CRLF; "" for any other command.
func RefusalReason(args [][]byte) string {
	if Classify(args) != Refused {
		return ""
	}
	return refusalDebugSync // the only command refused whatever its arguments
}

// decision is a route and its reason.
type decision struct {
	route  Route
	byArgs func([][]byte) Route
	why    string
	// derived is set when the flags decided, not an override.
	derived bool
}

// overrideOf indexes overrides by name.
var overrideOf = func() map[string]*override {
	m := map[string]*override{}
	for i := range overrides {
		for _, n := range overrides[i].names {
			m[n] = &overrides[i]
		}
	}
	return m
}()

// decide routes the command called name (c is its table entry, nil when
// the table does not know it): by its override if it has one, else by its
// flags and ACL categories.
func decide(name string, c *Command) decision {
	if o := overrideOf[name]; o != nil {
		return decision{route: o.route, byArgs: o.byArgs, why: o.why}
	}
	d := decision{route: Dedicated, derived: true}
	switch {
	case c == nil:
		d.why = "unknown to the table: anything may happen on the connection"
	case c.Flags&FlagBlocking != 0 || c.ACL&ACLBlocking != 0:
		d.route, d.why = Blocking, "flagged `blocking`: may wait for data; leaves no state once answered"
	case c.Flags&FlagAdmin != 0 || c.ACL&ACLAdmin != 0:
		d.why = "`admin`, not known to be plain request/reply"
	case c.ACL&ACLConnection != 0:
		d.why = "`@connection`: sets or reports state of the connection, which must stay the session's own"
	case c.Flags&FlagPubSub != 0:
		d.why = "`pubsub`, not known to be plain request/reply"
	case c.ACL&ACLTransaction != 0:
		d.why = "`@transaction`: transaction state lives on the connection"
	case c.Flags&FlagNoAuth != 0:
		d.why = "`no_auth`: runs before authentication, a connection-level command"
	case c.Flags&FlagNoMulti != 0:
		d.why = "`no_multi`: not plain request/reply"
	case c.Flags&FlagModule != 0:
		d.why = "a module's command: it may block or keep state without a flag saying so"
	default:
		d.route, d.why = Shared, "plain request/reply: one reply, no connection state, never blocks, no pushes"
	}
	return d
}
