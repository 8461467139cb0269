package commands

import (
	"strings"
	"testing"
)

// routeTests are the README's behaviour rows, command line by command line:
// words are separated by single spaces.
var routeTests = []struct {
	line string
	want Route
}{
	// Plain request/reply, in any case.
	{"GET k", Shared},
	{"get k", Shared},
	{"gEt k", Shared},
	{"SET k v EX 10", Shared},
	{"MGET a b", Shared},
	{"XADD xs * f v", Shared},
	{"EVAL return 1 0", Shared},
	{"EVALSHA 0123 0", Shared},
	{"EVAL_RO return 1 0", Shared},
	{"FCALL f 0", Shared},
	{"FCALL_RO f 0", Shared},
	{"SCRIPT LOAD return 1", Shared},
	{"SCRIPT FLUSH", Shared},
	{"script exists 0123", Shared},
	{"FUNCTION LIST", Shared},
	{"OBJECT ENCODING k", Shared},
	{"object freq k", Shared},
	{"MEMORY USAGE k", Shared},
	{"MEMORY STATS", Shared},
	{"MEMORY PURGE", Shared},
	{"INFO", Shared},
	{"DBSIZE", Shared},
	{"KEYS *", Shared},
	{"FLUSHALL", Shared},
	{"SWAPDB 0 1", Shared},
	{"TIME", Shared},
	{"LOLWUT", Shared},
	{"CLUSTER INFO", Shared},
	{"CLUSTER KEYSLOT k", Shared},
	// Shared by override although the flags say otherwise.
	{"PING", Shared},
	{"ping hello", Shared},
	{"ECHO x", Shared},
	{"COMMAND", Shared},
	{"COMMAND COUNT", Shared},
	{"command docs get", Shared},
	{"COMMAND GETKEYS SET k v", Shared},
	{"PUBLISH ch m", Shared},
	{"SPUBLISH ch m", Shared},
	{"PUBSUB CHANNELS", Shared},
	{"pubsub numsub ch", Shared},
	{"CLIENT LIST", Shared},
	{"client list type normal", Shared},
	{"CLIENT HELP", Shared},
	{"CONFIG GET maxmemory", Shared},
	{"CONFIG SET maxmemory 0", Shared},
	{"CONFIG RESETSTAT", Shared},
	{"CONFIG REWRITE", Shared},
	{"SLOWLOG GET 10", Shared},
	{"LATENCY LATEST", Shared},
	{"BGSAVE", Shared},
	{"BGREWRITEAOF", Shared},
	{"LASTSAVE", Shared},
	{"ROLE", Shared},
	{"MODULE LIST", Shared},
	{"ACL WHOAMI", Shared},
	{"ACL SETUSER u on", Shared},
	{"ACL GETUSER u", Shared},
	{"ACL LOG RESET", Shared},
	// A container without its subcommand: Redis refuses it for arity.
	{"CLIENT", Shared},
	{"config", Shared},
	// XREAD and XREADGROUP without BLOCK, by Redis's option syntax.
	{"XREAD STREAMS xs 0", Shared},
	{"XREAD COUNT 10 STREAMS xs 0", Shared},
	{"XREAD STREAMS block 0", Shared},          // a stream called "block"
	{"XREAD COUNT 1 STREAMS BLOCK 0", Shared},  // BLOCK after STREAMS is a key
	{"XREAD STREAMS xs1 BLOCK 0 0", Shared},    // ... or an id
	{"XREAD COUNT block STREAMS xs 0", Shared}, // a bad count: an error, not a block
	{"xreadgroup group g c streams xs >", Shared},
	{"XREADGROUP GROUP block c STREAMS xs >", Shared}, // a group called "block"
	{"XREADGROUP GROUP g BLOCK STREAMS xs >", Shared}, // a consumer called "BLOCK"
	{"XREADGROUP GROUP g c NOACK COUNT 1 STREAMS xs >", Shared},
	{"XREADGROUP GROUP streams c1 STREAMS xs >", Shared},

	// Blocking.
	{"BLPOP k 0", Blocking},
	{"brpop k 0", Blocking},
	{"BRPOPLPUSH a b 0", Blocking},
	{"BLMOVE a b LEFT RIGHT 0", Blocking},
	{"BLMPOP 0 1 k LEFT", Blocking},
	{"BZPOPMIN k 0", Blocking},
	{"BZPOPMAX k 0", Blocking},
	{"BZMPOP 0 1 k MIN", Blocking},
	{"XREAD BLOCK 0 STREAMS xs $", Blocking},
	{"xread block 100 streams xs $", Blocking},
	{"XREAD COUNT 1 BLOCK 0 STREAMS xs $", Blocking},
	{"XREADGROUP GROUP streams c1 BLOCK 0 STREAMS xs >", Blocking}, // a group called "streams"
	{"XREADGROUP GROUP g c BLOCK 0 NOACK STREAMS xs >", Blocking},
	{"XREADGROUP GROUP g streams BLOCK 0 STREAMS xs >", Blocking}, // a consumer called "streams"
	{"XREADGROUP COUNT streams BLOCK 0 GROUP g c STREAMS xs >", Blocking},
	// Malformed XREADs count as blocking.
	{"XREAD COUNT 1 BLOCK", Blocking}, // BLOCK without its value
	{"XREAD BLOCK 0", Blocking},       // no STREAMS
	{"XREAD", Blocking},
	{"XREAD STREAMS", Blocking},                   // STREAMS without keys
	{"XREAD BLOCK x STREAMS xs $", Blocking},      // a bad timeout
	{"XREAD GROUP g c STREAMS xs 0", Blocking},    // GROUP is XREADGROUP's
	{"XREAD NOACK STREAMS xs 0", Blocking},        // so is NOACK
	{"XREAD FOO 1 STREAMS xs 0", Blocking},        // an unknown option
	{"XREADGROUP GROUP g STREAMS xs >", Blocking}, // GROUP takes two arguments: STREAMS is the consumer
	{"SCRIPT KILL", Blocking},
	{"FUNCTION KILL", Blocking},
	{"SAVE", Blocking},
	{"MIGRATE host 6379 k 0 1000", Blocking},

	// Dedicated.
	{"FOO", Dedicated},
	{"foo bar", Dedicated},
	{"CLIENT FOO", Dedicated},
	{"CONFIG FOO", Dedicated},
	{"CLIENT NO-TOUCH on", Dedicated}, // Redis 7.2: unknown to a 7.0 table
	{"DEBUG SLEEP 0", Dedicated},
	{"DEBUG PROTOCOL push", Dedicated},
	{"debug object k", Dedicated},
	{"SCRIPT DEBUG YES", Dedicated},
	{"script debug sync", Refused},
	{"SCRIPT DEBUG NO", Dedicated},
	{"CLIENT NO-EVICT on", Dedicated},
	{"CLIENT CACHING yes", Dedicated},
	{"CLIENT ID", ClientID},
	{"CLIENT INFO", ClientInfo},
	{"CLIENT GETREDIR", Dedicated},
	{"CLIENT TRACKINGINFO", Dedicated},
	{"CLIENT PAUSE 100 WRITE", Dedicated},
	{"CLIENT UNPAUSE", Dedicated},
	{"READONLY", Dedicated},
	{"READWRITE", Dedicated},
	{"ASKING", Dedicated},
	{"FAILOVER", Dedicated},
	{"SHUTDOWN NOSAVE", Dedicated},
	{"REPLICAOF NO ONE", Dedicated},
	{"SLAVEOF no one", Dedicated},
	{"ACL LOAD", Dedicated},
	{"ACL DELUSER u", Dedicated},
	{"MODULE LOAD /x.so", Dedicated},
	{"PFDEBUG GETREG k", Dedicated},
	{"PFSELFTEST", Dedicated},
	{"CLUSTER RESET", Dedicated},
	{"CLIENT|KILL ID 5", Dedicated},       // not a name Redis runs
	{"GET\x00 k", Dedicated},              // not GET to the table
	{strings.Repeat("x", 100), Dedicated}, // longer than any name
	{"CLIENT " + strings.Repeat("x", 100), Dedicated},

	// Transactions.
	{"MULTI", Multi},
	{"exec", Exec},
	{"DISCARD", Discard},
	{"WATCH a b", Watch},
	{"UNWATCH", Unwatch},

	// Pushes.
	{"SUBSCRIBE a", Subscribe},
	{"psubscribe a*", Subscribe},
	{"SSUBSCRIBE a", Subscribe},
	{"UNSUBSCRIBE", Subscribe},
	{"PUNSUBSCRIBE", Subscribe},
	{"SUNSUBSCRIBE a", Subscribe},
	{"MONITOR", Subscribe},

	// Connection state the session handles.
	{"SELECT 1", Select},
	{"select 0", Select},
	{"HELLO", Hello},
	{"HELLO 3", Hello},
	{"hello 2 AUTH u p SETNAME n", Hello},
	{"HELLO 3 SETNAME", Hello}, // malformed: the session answers from ParseHello
	{"AUTH p", Auth},
	{"AUTH u p", Auth},
	{"QUIT", Quit},
	{"RESET", Reset},
	{"CLIENT SETNAME x", ClientSetName},
	{"client getname", ClientGetName},
	{"CLIENT SETINFO LIB-NAME x", ClientSetInfo}, // Redis 7.2
	{"CLIENT TRACKING on", ClientTracking},
	{"CLIENT TRACKING on REDIRECT 5", ClientTracking},
	{"client tracking off", ClientTracking},
	{"CLIENT REPLY OFF", ClientReply},
	{"CLIENT REPLY ON", ClientReply},
	{"CLIENT REPLY SKIP", ClientReply},
	{"CLIENT KILL ID 5", ClientKill},
	{"CLIENT KILL 127.0.0.1:6379", ClientKill},
	{"CLIENT UNBLOCK 5 ERROR", ClientUnblock},
	{"WAIT 1 0", Wait},
	{"WAITAOF 1 0 0", Wait}, // Redis 7.2
	{"waitaof 0 1 0", Wait},

	// Never forwarded.
	{"replconf listening-port 6380", ReplConf},
	{"sync", Replicate},
	{"PSYNC ? -1", Replicate},
}

func TestClassify(t *testing.T) {
	for _, tt := range routeTests {
		if got := Classify(byteArgs(tt.line)); got != tt.want {
			t.Errorf("Classify(%q) = %s, want %s", tt.line, got, tt.want)
		}
	}
}

// TestClassifyAgreesWithTable classifies every command and subcommand of
// the table by name, in upper case, as Redis's clients may spell them.
func TestClassifyAgreesWithTable(t *testing.T) {
	for i := range table {
		c := &table[i]
		if c.byArgs != nil {
			continue
		}
		args := byteArgs(strings.ToUpper(strings.ReplaceAll(c.Name, "|", " ")))
		if got := Classify(args); got != c.route {
			t.Errorf("Classify(%q) = %s, the table says %s", args, got, c.route)
		}
	}
}

func TestRefusalReason(t *testing.T) {
	if got := RefusalReason(byteArgs("script debug SYNC")); got != refusalDebugSync || !strings.HasPrefix(got, "ERR ") {
		t.Errorf("RefusalReason(SCRIPT DEBUG SYNC) = %q", got)
	}
	if got := RefusalReason(byteArgs("GET k")); got != "" {
		t.Errorf("RefusalReason(GET) = %q, want none", got)
	}
}

func TestLookup(t *testing.T) {
	for _, tt := range []struct {
		name, sub string
		want      string
	}{
		{"GET", "", "get"},
		{"Client", "", "client"},
		{"client", "KiLL", "client|kill"},
		{"GET", "x", ""},       // not a container
		{"CLIENT", "nope", ""}, // unknown subcommand
		{"client|kill", "", ""},
		{"nope", "", ""},
		{"", "", ""},
		{strings.Repeat("g", 70), "", ""},
	} {
		c := Lookup([]byte(tt.name))
		if tt.sub != "" && c != nil {
			c = c.Sub([]byte(tt.sub))
		}
		got := ""
		if c != nil {
			got = c.Name
		}
		if got != tt.want {
			t.Errorf("Lookup(%q).Sub(%q) = %q, want %q", tt.name, tt.sub, got, tt.want)
		}
	}
}

func TestRouteString(t *testing.T) {
	for r := Shared; r <= Refused; r++ {
		if s := r.String(); s == "" || strings.HasPrefix(s, "Route(") {
			t.Errorf("route %d has no name", r)
		}
	}
	if s := (Refused + 1).String(); s != "Route(27)" {
		t.Errorf("an unknown route reads %q", s)
	}
}

func TestClassifyAllocatesNothing(t *testing.T) {
	for _, tt := range routeTests {
		args := byteArgs(tt.line)
		if n := testing.AllocsPerRun(10, func() { Classify(args) }); n != 0 {
			t.Errorf("Classify(%q) allocates %v times", tt.line, n)
		}
	}
}

// BenchmarkClassify classifies a plain command, a container's subcommand,
// an XREADGROUP whose options are scanned, and an unknown command.
func BenchmarkClassify(b *testing.B) {
	for _, bm := range []struct{ name, line string }{
		{"plain", "GET k"},
		{"subcommand", "CONFIG GET maxmemory"},
		{"xreadgroup", "XREADGROUP GROUP g c COUNT 10 BLOCK 0 STREAMS xs >"},
		{"unknown", "UNKNOWNCMD k"},
	} {
		args := byteArgs(bm.line)
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Classify(args)
			}
		})
	}
}

func TestResolveIDs(t *testing.T) {
	for _, tc := range []struct{ args, name string }{
		{"GET k", "get"}, {"client KILL ID 5", "client|kill"}, {"CLIENT", "client"},
		{"client nosuchsub", "other"}, {"nosuchcommand x", "other"},
	} {
		_, id := Resolve(byteArgs(tc.args))
		if got := NameOf(id); got != tc.name {
			t.Errorf("Resolve(%q): id %d names %q, want %q", tc.args, id, got, tc.name)
		}
	}
	if NameOf(IDs) != "other" || NameOf(-1) != "other" {
		t.Error("ids out of range must name other")
	}
}
