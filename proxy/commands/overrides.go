package commands

// The decisions Redis's flags cannot make. Everything else follows decide:
// a known command is Shared unless its flags or ACL categories say it
// blocks, is administrative, acts on the connection, publishes or
// subscribes, belongs to a transaction, runs before authentication, cannot
// run in MULTI, or comes from a module.
//
// Decided by the flags, deliberately, with no override:
//   - EVAL, EVALSHA, FCALL and their _RO forms are Shared: a script cannot
//     block (blocking commands do not block inside one) and, since Redis
//     7.0, its SELECT does not change the caller's database.
//   - OBJECT and MEMORY are Shared (no flags beyond read-only).
//   - ACL WHOAMI is Shared: on a shared connection it names the pool's user,
//     which is the session's until the session authenticates, and AUTH pins
//     the session.
//   - DEBUG (every form), CLIENT PAUSE and UNPAUSE, CLIENT NO-EVICT, FAILOVER,
//     SHUTDOWN, REPLICAOF/SLAVEOF, MODULE LOAD/UNLOAD, the administrative
//     CLUSTER subcommands, PFDEBUG and PFSELFTEST are Dedicated (admin).
//     Pausing clients or changing the server's role stalls or refuses every
//     connection alike; nothing is gained by running them on a shared one.
//   - ACL LOAD and ACL DELUSER are Dedicated (admin, and not allowlisted
//     below): removing the user a connection is authenticated as closes that
//     connection once it has answered.
//   - READONLY, READWRITE, ASKING and CLIENT CACHING, GETREDIR, ID, INFO,
//     TRACKINGINFO are Dedicated (@connection): they set or report state of
//     the connection, which must stay the session's own.
//   - A container without a subcommand (CLIENT alone) follows the
//     container's own flags, which are Shared: Redis refuses it for arity
//     without doing anything. COMMAND alone lists the commands.

// override fixes the route of the named commands; names are lower case,
// "parent|sub" for a subcommand.
type override struct {
	names []string
	route Route
	// byArgs, when set, decides from the arguments; route is its worst case
	// and shown says, for the README, when it applies.
	byArgs func(args [][]byte) Route
	shown  string
	// why is the README's reason.
	why string
}

var overrides = []override{
	// Shared although the flags say otherwise.
	{names: []string{"ping", "echo", "client|help"}, route: Shared,
		why: "`@connection`, but they only answer: one reply, no state"},
	{names: []string{"command", "command|count", "command|docs", "command|getkeys", "command|getkeysandflags", "command|help", "command|info", "command|list"}, route: Shared,
		why: "`@connection`, but they describe Redis's commands, not the connection"},
	{names: []string{"publish", "spublish", "pubsub|channels", "pubsub|numpat", "pubsub|numsub", "pubsub|shardchannels", "pubsub|shardnumsub"}, route: Shared,
		why: "flagged `pubsub`, but plain request/reply: a publisher gets one reply, never messages"},
	{names: []string{"client|list"}, route: Shared,
		why: "`admin` and `@connection`, but information only: it lists every connection whichever one runs it. The ids it shows include the shared connections'; the commands that could use them (`CLIENT KILL`, `CLIENT UNBLOCK`, `CLIENT TRACKING … REDIRECT`) are checked by the session"},
	// Administrative commands read in Redis's source (7.0.15) and found to be
	// plain request/reply, acting on the server and never on the connection.
	{names: []string{"config|get", "config|set", "config|resetstat", "config|rewrite", "slowlog|get", "slowlog|len", "slowlog|reset", "latency|doctor", "latency|graph", "latency|histogram", "latency|history", "latency|latest", "latency|reset", "bgsave", "bgrewriteaof", "lastsave", "role", "module|list"}, route: Shared,
		why: "`admin`, but plain request/reply about the server, not the connection (`BGSAVE` and `BGREWRITEAOF` start a child and answer at once)"},
	{names: []string{"acl|dryrun", "acl|getuser", "acl|list", "acl|log", "acl|save", "acl|setuser", "acl|users"}, route: Shared,
		why: "`admin`, but plain request/reply that reads or changes users (`ACL SETUSER` disconnects nobody)"},

	// Not Shared, though nothing or not enough in the flags says so.
	{names: []string{"xread", "xreadgroup"}, route: Blocking, byArgs: xreadRoute, shown: "`XREAD`, `XREADGROUP` with `BLOCK`",
		why: "with a `BLOCK` option, found by Redis's own option syntax (a group or key called `block` or `streams` is not an option); malformed options count as blocking. Without `BLOCK` they are shared"},
	{names: []string{"script|kill", "function|kill"}, route: Blocking,
		why: "must reach Redis while a script runs: Redis stops reading the connection of a script that timed out, so on a shared connection it could wait behind the very script it should kill"},
	{names: []string{"save", "migrate"}, route: Blocking,
		why: "synchronous: `SAVE` dumps the dataset, `MIGRATE` waits on another Redis up to its timeout; either may outlast a shared connection's read deadline. They leave no state"},
	{names: []string{"script|debug"}, route: Dedicated, byArgs: scriptDebugRoute, shown: "`SCRIPT DEBUG` (`SYNC`: refused)",
		why: "`YES` turns the connection into a Lua debugging session (no flag says so): a dedicated connection. `SYNC` is refused: the synchronous debugger runs in Redis's main thread and stops the server for every client of the proxy while it waits for debugger commands"},
	{names: []string{"wait", "waitaof"}, route: Wait,
		why: "counts the writes made on this connection and blocks until replicas (or the AOF) have them; not flagged `blocking`"},

	// Commands the session handles itself.
	{names: []string{"multi"}, route: Multi, why: "the queued commands live on the connection (flagged only `@transaction`)"},
	{names: []string{"exec"}, route: Exec, why: "runs and ends the transaction"},
	{names: []string{"discard"}, route: Discard, why: "ends the transaction"},
	{names: []string{"watch"}, route: Watch, why: "the watched keys live on the connection"},
	{names: []string{"unwatch"}, route: Unwatch, why: "ends `WATCH`"},
	{names: []string{"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe", "monitor"}, route: Subscribe,
		why: "Redis sends data nobody asked for (messages, `MONITOR` lines)"},
	{names: []string{"select"}, route: Select, why: "the selected database is connection state"},
	{names: []string{"hello"}, route: Hello, why: "sets the connection's protocol; with `AUTH` or `SETNAME` it also authenticates or names the connection"},
	{names: []string{"auth"}, route: Auth, why: "authenticates the connection"},
	{names: []string{"quit"}, route: Quit, why: "closes the connection"},
	{names: []string{"reset"}, route: Reset, why: "resets the connection's state; on a shared connection, every client's"},
	{names: []string{"client|setname"}, route: ClientSetName, why: "names the connection"},
	{names: []string{"client|getname"}, route: ClientGetName, why: "reports the connection's name, which on a shared connection is not the session's"},
	{names: []string{"client|setinfo"}, route: ClientSetInfo, why: "sets the connection's library name and version (Redis 7.2)"},
	{names: []string{"client|id"}, route: ClientID, why: "reports the connection's id, which on a shared connection is not the session's"},
	{names: []string{"client|info"}, route: ClientInfo, why: "describes the connection, which on a shared connection is not the session's"},
	{names: []string{"client|tracking"}, route: ClientTracking, why: "`ON` makes Redis push invalidations, to this connection or to the one `REDIRECT` names"},
	{names: []string{"client|reply"}, route: ClientReply, why: "`OFF` and `SKIP` suppress replies, which the proxy counts"},
	{names: []string{"client|kill"}, route: ClientKill, why: "names other connections, which may be shared ones"},
	{names: []string{"client|unblock"}, route: ClientUnblock, why: "names another connection, which may be a shared one"},
	{names: []string{"sync", "psync"}, route: Replicate, why: "once Redis accepts it, the connection carries a replication stream (the RDB, then the commands), not requests and replies"},
	{names: []string{"replconf"}, route: ReplConf, why: "configures the replication stream a `SYNC`/`PSYNC` on the same connection starts; `REPLCONF ACK`/`GETACK` get no reply"},
}

// newerThanTable lists overridden commands that Redis versions newer than
// the table's add, with the version; Classify routes them by name even
// though the table does not know them.
var newerThanTable = map[string]string{
	"waitaof":        "7.2.0",
	"client|setinfo": "7.2.0",
}

// refusalDebugSync is the error SCRIPT DEBUG SYNC gets.
const refusalDebugSync = "ERR SCRIPT DEBUG SYNC is not available through tlsproxy: it stops the Redis server for every client; use SCRIPT DEBUG YES"

// scriptDebugRoute refuses SCRIPT DEBUG SYNC and gives any other mode (or a
// malformed one, which Redis rejects) a dedicated connection.
func scriptDebugRoute(args [][]byte) Route {
	if len(args) == 3 && Keyword(args[2], "sync") {
		return Refused
	}
	return Dedicated
}
