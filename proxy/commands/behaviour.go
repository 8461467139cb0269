package commands

import (
	"fmt"
	"strings"
)

// paths describes each route for the README's "path" column.
var paths = [...]string{
	Shared:         "**shared**: a few multiplexed connections per protocol and database (`upstream.pool.max_size` each), batched across clients",
	Dedicated:      "**dedicated** connection for the rest of the session; closed, never reused, when the session ends",
	Blocking:       "dedicated while it runs, with no read deadline; back to shared once answered (a client that leaves meanwhile has its connection closed, so nothing is consumed for it)",
	Multi:          "dedicated until Redis has answered `EXEC` or `DISCARD`; a `MULTI` that finds no dedicated connection fails every command up to its `EXEC`/`DISCARD`",
	Exec:           "on the dedicated connection; answered by the proxy (`EXEC without MULTI`) when there is none. After a command the proxy refused inside the transaction, Redis gets `DISCARD` and the client `EXECABORT`",
	Discard:        "on the dedicated connection; answered by the proxy (`DISCARD without MULTI`) when there is none",
	Watch:          "dedicated until Redis confirms the watch is over (`EXEC`, `DISCARD`, `UNWATCH`)",
	Unwatch:        "on the dedicated connection; answered `+OK` by the proxy when there is none",
	Subscribe:      "dedicated for the rest of the session; everything Redis sends is forwarded as it arrives",
	Select:         "served by the shared connections of the database asked for (the proxy keeps the session's database); on the dedicated connection when the session holds one",
	Hello:          "on a shared connection of the protocol asked for, with the reply's `id` set to 0 (a shared connection's id is nobody's); `SETNAME` is kept by the proxy; `AUTH` as for the `AUTH` command",
	Auth:           "checked by Redis on a shared connection of a pool logged in as that user; the session then uses that pool's shared connections. A session whose `AUTH` cannot be checked (Redis unreachable) is closed, never left as the proxy's own user",
	Quit:           "answered `+OK` by the proxy after every earlier reply, or forwarded on the dedicated connection (Redis answers and closes); then the connection closes",
	Reset:          "answered `+RESET` by the proxy on shared connections; forwarded on the dedicated connection, which is then set up again before reuse. The session returns to shared connections in RESP2, in the URL's database",
	ClientSetName:  "kept by the proxy: the name belongs to the session, not to a connection",
	ClientGetName:  "answered by the proxy from the session's name",
	ClientSetInfo:  "answered by the proxy (Redis's own error on a Redis without it); never sets a shared connection's library name",
	ClientID:       "answered by the proxy with the session's own id, from a range Redis never assigns; `CLIENT TRACKING … REDIRECT` to it reaches that session's dedicated connection",
	ClientInfo:     "on shared connections, the shared connection's line with the session's id and name; on the dedicated connection, that connection's line",
	ClientTracking: "`ON`: dedicated for the rest of the session, invalidations forwarded in order; `REDIRECT` only to a connection a client holds, never a shared one. `OFF` without tracking: answered `+OK`",
	ClientReply:    "`OFF`/`SKIP`: dedicated for the rest of the session. `ON` without them: answered `+OK`",
	ClientKill:     "with an `ID` or `ADDR` that names a client of the proxy (its session id or address, or its dedicated connection's id or address as Redis's `CLIENT LIST` shows them): the other filters are checked against that client, which is closed, together with its dedicated connection. Without `ID` or `ADDR`, or naming a shared connection: refused with an error saying why. Redis checks the syntax first, so malformed forms get Redis's own errors",
	ClientUnblock:  "forwarded with the id of the dedicated connection of the client named (by session id or Redis id); a client without one is not blocked (`0`); a shared connection's id is refused",
	Replicate:      "on the session's dedicated connection; once Redis accepts it, bytes are copied both ways without parsing until either side closes. Refused after commands that made replies uncountable (subscriptions, `MONITOR`, `CLIENT REPLY OFF`)",
	ReplConf:       "dedicated for the rest of the session (a `SYNC`/`PSYNC` follows on the same connection)",
	Wait:           "forwarded when the session holds a dedicated connection (counting the writes made on it); refused otherwise",
	Refused:        "refused with an error saying why",
}

// pathsAgain is the shorter path column of a route's later rows.
var pathsAgain = map[Route]string{Shared: "shared", Dedicated: "dedicated", Blocking: "dedicated while it runs"}

// sharedExamples are named in the README's summary of the shared commands.
var sharedExamples = []string{"get", "set", "mget", "eval", "fcall", "xadd", "object|encoding", "memory|usage", "info", "acl|whoami"}

// BehaviourTable is the README's table of command behaviour: one row per
// route and reason, naming every command that is not Shared, the overridden
// Shared ones, and a count of the rest. go generate writes it into README.md.
func BehaviourTable() string {
	type row struct {
		why, shown string
		names      []string
	}
	var rows [len(paths)][]*row
	add := func(route Route, why, shown, name string) {
		for _, r := range rows[route] {
			if r.why == why {
				r.names = append(r.names, name)
				return
			}
		}
		rows[route] = append(rows[route], &row{why: why, shown: shown, names: []string{name}})
	}
	// Overrides first, in their order, so rows follow overrides.go.
	for _, o := range overrides {
		for _, n := range o.names {
			if byName[n] != nil || newerThanTable[n] != "" {
				add(o.route, o.why, o.shown, n)
			}
		}
	}
	var commands, subcommands int
	for i := range table {
		c := &table[i]
		d := decide(c.Name, c)
		switch {
		case !d.derived:
		case d.route != Shared:
			add(d.route, d.why, "", c.Name)
		case strings.Contains(c.Name, "|"):
			subcommands++
		default:
			commands++
		}
	}
	unknown := decide("", nil)

	var b strings.Builder
	fmt.Fprintf(&b, "Generated by `go generate ./proxy/commands` from the command metadata of Redis %s (`COMMAND`, `COMMAND DOCS`) and [the overrides](proxy/commands/overrides.go).\n\n", RedisVersion)
	b.WriteString("| commands | path | why |\n| --- | --- | --- |\n")
	var examples []string
	for _, n := range sharedExamples {
		if c := byName[n]; c != nil && c.route == Shared && c.byArgs == nil {
			examples = append(examples, n)
		}
	}
	fmt.Fprintf(&b, "| every known command not listed below: %d commands and %d subcommands (%s, ...) | %s | %s |\n",
		commands, subcommands, names(examples), paths[Shared], decide("get", byName["get"]).why)
	for route, rs := range rows {
		path := paths[route]
		if Route(route) == Shared {
			path = pathsAgain[Shared] // after the summary row
		}
		for _, r := range rs {
			shown := r.shown
			if shown == "" {
				shown = names(r.names)
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", shown, path, r.why)
			if again := pathsAgain[Route(route)]; again != "" {
				path = again
			}
		}
		if Route(route) == Dedicated {
			fmt.Fprintf(&b, "| any command or subcommand the table does not know | %s | %s |\n", path, unknown.why)
		}
	}
	return b.String()
}

// names writes command names as the README does: "`CLIENT ID`/`INFO`,
// `DEBUG`", subcommands of one command together.
func names(list []string) string {
	var b strings.Builder
	prev := ""
	for i, n := range list {
		parent, sub, isSub := strings.Cut(n, "|")
		switch {
		case isSub && parent == prev:
			b.WriteString("/`" + strings.ToUpper(sub) + "`")
			continue
		case i > 0:
			b.WriteString(", ")
		}
		b.WriteString("`" + strings.ToUpper(strings.ReplaceAll(n, "|", " ")) + "`")
		prev = ""
		if isSub {
			prev = parent
		}
	}
	return b.String()
}
