package commands

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/commands/internal/gen"
)

// TestTableUpToDate regenerates the table from the local redis-server and
// compares it with the checked-in table_gen.go, so that a drift between
// them fails here rather than in production.
func TestTableUpToDate(t *testing.T) {
	srv := startRedis(t)
	m, err := gen.Load(dial(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	want, err := gen.Source(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("table_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("table_gen.go (from redis %s) differs from what the local redis-server %s reports; run `go generate ./proxy/commands` and review the routes of new or changed commands", RedisVersion, m.Version)
	}
}

// TestTableMatchesRedis checks every command's entry, through Lookup and
// Sub, against what Redis reports: names, flags and categories map to the
// right constants.
func TestTableMatchesRedis(t *testing.T) {
	srv := startRedis(t)
	m, err := gen.Load(dial(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	check := func(want gen.Command, got *Command) {
		t.Helper()
		if got == nil {
			t.Errorf("%s: not in the table", want.Name)
			return
		}
		acl := make([]string, len(want.ACL))
		for i, a := range want.ACL {
			acl[i] = "@" + a
		}
		for _, c := range []struct{ field, got, want string }{
			{"name", got.Name, want.Name},
			{"flags", got.Flags.String(), strings.Join(want.Flags, " ")},
			{"ACL categories", got.ACL.String(), strings.Join(acl, " ")},
			{"doc flags", got.Doc.String(), strings.Join(want.DocFlags, " ")},
			{"group", got.Group, want.Group},
			{"since", got.Since, want.Since},
		} {
			if c.got != c.want {
				t.Errorf("%s: %s %q, Redis says %q", want.Name, c.field, c.got, c.want)
			}
		}
		if got.Arity != want.Arity || got.Keys != (KeyRange{want.First, want.Last, want.Step}) {
			t.Errorf("%s: arity %d keys %v, Redis says %d %v", want.Name, got.Arity, got.Keys, want.Arity, KeyRange{want.First, want.Last, want.Step})
		}
	}
	n := 0
	for _, want := range m.Commands {
		c := Lookup([]byte(strings.ToUpper(want.Name)))
		check(want, c)
		n++
		for _, sub := range want.Subcommands {
			_, name, _ := strings.Cut(sub.Name, "|")
			if c != nil {
				check(sub, c.Sub([]byte(strings.ToUpper(name))))
			}
			n++
		}
	}
	if n != len(table) {
		t.Errorf("Redis has %d commands and subcommands, the table %d", n, len(table))
	}
}

// TestOverridesName checks that every override names a command the table
// knows, or one a newer Redis added, and names it once.
func TestOverridesName(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range overrides {
		if o.why == "" {
			t.Errorf("override %v has no reason", o.names)
		}
		for _, n := range o.names {
			if seen[n] {
				t.Errorf("%s is overridden twice", n)
			}
			seen[n] = true
			since, newer := newerThanTable[n]
			switch {
			case byName[n] == nil && !newer:
				t.Errorf("override names %q, which the table does not know (a typo, or add it to newerThanTable)", n)
			case byName[n] != nil && newer:
				t.Errorf("%q is in the table now (redis %s); remove it from newerThanTable (added in %s)", n, RedisVersion, since)
			}
		}
	}
	for n := range newerThanTable {
		if !seen[n] {
			t.Errorf("newerThanTable lists %q, which no override routes", n)
		}
	}
}

// TestSharedOnlyWhenPlain checks the allowlist from the other side: a
// command whose flags say it may block, push, act on the connection or
// administer the server is Shared only through an explicit override.
func TestSharedOnlyWhenPlain(t *testing.T) {
	const suspectFlags = FlagBlocking | FlagPubSub | FlagAdmin | FlagNoAuth | FlagNoMulti | FlagModule
	const suspectACL = ACLBlocking | ACLConnection | ACLAdmin | ACLTransaction
	for i := range table {
		c := &table[i]
		if c.route != Shared || c.container {
			continue
		}
		if (c.Flags&suspectFlags != 0 || c.ACL&suspectACL != 0) && overrideOf[c.Name] == nil {
			t.Errorf("%s is Shared although flagged %q %q, with no override saying why", c.Name, c.Flags&suspectFlags, c.ACL&suspectACL)
		}
	}
}

// TestREADMETable checks that README.md shows BehaviourTable.
func TestREADMETable(t *testing.T) {
	doc, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got, err := gen.Section(doc)
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	if want := BehaviourTable(); string(got) != want {
		t.Errorf("README.md's command table is out of date; run `go generate ./proxy/commands`\n--- README.md\n%s\n--- BehaviourTable\n%s", got, want)
	}
}

// TestBehaviourTableNamesEveryRoute checks that every command that is not
// Shared appears in the README table.
func TestBehaviourTableNamesEveryRoute(t *testing.T) {
	shown := map[string]bool{}
	for _, line := range strings.Split(BehaviourTable(), "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) < 3 {
			continue
		}
		// "| `CLIENT ID`/`INFO`, `DEBUG` ..." lists CLIENT|ID, CLIENT|INFO, DEBUG.
		for _, item := range strings.Split(strings.TrimPrefix(cells[0], "| "), ", ") {
			parent := ""
			for i, name := range strings.Split(item, "/") {
				name = strings.ToLower(strings.Trim(strings.SplitAfter(name, "` ")[0], "` "))
				if i == 0 {
					parent, _, _ = strings.Cut(name, " ")
				} else {
					name = parent + " " + name
				}
				shown[strings.ReplaceAll(name, " ", "|")] = true
			}
		}
	}
	for i := range table {
		c := &table[i]
		if c.route != Shared || c.byArgs != nil {
			if !shown[c.Name] {
				t.Errorf("%s (%s) is not in the README table", c.Name, c.route)
			}
		}
	}
}
