package commands

import (
	"bytes"
	"strings"
)

// Command is what Redis says about one command or subcommand: the
// generated table's entry. Lookup and Sub return pointers into the table;
// callers must not modify them.
type Command struct {
	// Name is lower case; a subcommand's is "parent|sub", as Redis names it.
	Name string
	// Arity counts the arguments with the command's name (and subcommand's):
	// n > 0 means exactly n, -n means at least n.
	Arity int
	Flags Flag
	ACL   ACLCategory
	Doc   DocFlag
	// Keys is COMMAND's key range. When the command has FlagMovableKeys,
	// the range is not the whole story: its keys depend on its arguments.
	Keys KeyRange
	// Group and Since come from COMMAND DOCS ("string", "1.0.0").
	Group, Since string

	container bool                 // has subcommands
	id        int                  // 1 + the position in the table (see ID)
	route     Route                // decided once, from the flags and the overrides
	byArgs    func([][]byte) Route // when set, decides instead of route
}

// KeyRange is COMMAND's legacy key specification: keys are the arguments at
// positions First, First+Step, ... up to Last, counting the command's name
// as position 0 (a subcommand's keys follow its name, from 2); a negative
// Last counts from the end, -1 being the last argument. First 0 means no
// keys at fixed positions.
type KeyRange struct {
	First, Last, Step int
}

// Flag is a set of COMMAND's flags.
type Flag uint32

// The flags COMMAND reports, in its order.
const (
	FlagWrite Flag = 1 << iota
	FlagReadonly
	FlagDenyOOM
	FlagModule
	FlagAdmin
	FlagPubSub
	FlagNoScript
	FlagBlocking
	FlagLoading
	FlagStale
	FlagSkipMonitor
	FlagSkipSlowlog
	FlagAsking
	FlagFast
	FlagNoAuth
	FlagNoMandatoryKeys
	FlagNoAsyncLoading
	FlagNoMulti
	FlagMovableKeys
	FlagAllowBusy
)

var flagNames = [...]string{
	"write", "readonly", "denyoom", "module", "admin", "pubsub", "noscript",
	"blocking", "loading", "stale", "skip_monitor", "skip_slowlog", "asking",
	"fast", "no_auth", "no_mandatory_keys", "no_async_loading", "no_multi",
	"movablekeys", "allow_busy",
}

// String gives Redis's names of the flags, space separated.
func (f Flag) String() string { return bitNames(uint64(f), flagNames[:], "") }

// ACLCategory is a set of ACL categories.
type ACLCategory uint32

// The ACL categories, in Redis's order.
const (
	ACLKeyspace ACLCategory = 1 << iota
	ACLRead
	ACLWrite
	ACLSet
	ACLSortedSet
	ACLList
	ACLHash
	ACLString
	ACLBitmap
	ACLHyperLogLog
	ACLGeo
	ACLStream
	ACLPubSub
	ACLAdmin
	ACLFast
	ACLSlow
	ACLBlocking
	ACLDangerous
	ACLConnection
	ACLTransaction
	ACLScripting
)

var aclNames = [...]string{
	"keyspace", "read", "write", "set", "sortedset", "list", "hash", "string",
	"bitmap", "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow",
	"blocking", "dangerous", "connection", "transaction", "scripting",
}

// String gives the categories as Redis writes them ("@read @fast").
func (a ACLCategory) String() string { return bitNames(uint64(a), aclNames[:], "@") }

// DocFlag is a set of COMMAND DOCS's doc_flags.
type DocFlag uint8

// The doc flags.
const (
	DocDeprecated DocFlag = 1 << iota
	DocSyscmd
)

var docFlagNames = [...]string{"deprecated", "syscmd"}

// String gives Redis's names of the doc flags, space separated.
func (d DocFlag) String() string { return bitNames(uint64(d), docFlagNames[:], "") }

func bitNames(bits uint64, names []string, prefix string) string {
	var b strings.Builder
	for i, n := range names {
		if bits&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(prefix)
			b.WriteString(n)
		}
	}
	return b.String()
}

// maxName bounds the names Lookup and Sub look at: the longest in Redis
// 7.0 is "cluster|count-failure-reports" (29 bytes). A longer name is
// unknown.
const maxName = 64

// byName indexes the table by Name.
var byName = index()

func index() map[string]*Command {
	m := make(map[string]*Command, len(table))
	for i := range table {
		c := &table[i]
		c.id = i + 1
		m[c.Name] = c
		if parent, _, ok := strings.Cut(c.Name, "|"); ok {
			m[parent].container = true // the table lists a parent before its subcommands
		}
	}
	for _, c := range m {
		d := decide(c.Name, c)
		c.route, c.byArgs = d.route, d.byArgs
	}
	return m
}

// IDs is the number of command ids: ID returns 0 for a command the table
// does not know, and 1 to IDs-1 for the table's commands and subcommands.
const IDs = len(table) + 1

// NameOf is the name of the command with id i ("get", "client|kill"), or
// "other" for 0, the commands the table does not know: a label of bounded
// cardinality for metrics.
func NameOf(i int) string {
	if i <= 0 || i >= IDs {
		return "other"
	}
	return table[i-1].Name
}

// Lookup returns the command called name, in any case; nil when the table
// does not know it. It allocates nothing.
func Lookup(name []byte) *Command {
	if bytes.IndexByte(name, '|') >= 0 {
		return nil // "client|kill" names a subcommand, which Redis does not run by that name
	}
	var buf [maxName]byte
	return byName[string(fold(buf[:0], name))]
}

// Known reports whether the table knows the command args names (and its
// subcommand, for a container command such as CLIENT).
func Known(args [][]byte) bool {
	c := Lookup(args[0])
	if c == nil {
		return false
	}
	return !c.container || len(args) < 2 || c.Sub(args[1]) != nil
}

// Sub returns c's subcommand called name, in any case; nil when c has no
// such subcommand (or none at all). It allocates nothing.
func (c *Command) Sub(name []byte) *Command {
	if !c.container || len(c.Name)+1+len(name) > maxName {
		return nil
	}
	var buf [maxName]byte
	b := append(append(buf[:0], c.Name...), '|')
	return byName[string(fold(b, name))]
}

// fold appends the ASCII lower case of name to b, which must have room for
// it within maxName bytes; otherwise it returns nil, which names nothing.
func fold(b, name []byte) []byte {
	if len(b)+len(name) > maxName {
		return nil
	}
	for _, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}
