// Package gen reads Redis's command metadata (COMMAND and COMMAND DOCS) from
// a running redis-server and renders the commands package's table from it.
package gen

import (
	"fmt"
	"sort"
	"strings"
)

// Metadata is what a redis-server says about its commands.
type Metadata struct {
	// Version is the server's redis_version.
	Version string
	// Commands are sorted by name; each one's Subcommands too.
	Commands []Command
}

// Command is one command or subcommand as COMMAND and COMMAND DOCS describe it.
type Command struct {
	Name  string // lower case; "parent|sub" for a subcommand
	Arity int
	// Flags, ACL (without '@') and DocFlags are in Redis's order.
	Flags    []string
	ACL      []string
	DocFlags []string
	// First, Last and Step are COMMAND's legacy key range.
	First, Last, Step int
	Group, Since      string
	Subcommands       []Command
}

// Load reads the metadata of every command from the server c talks to.
func Load(c *Client) (*Metadata, error) {
	version, err := serverVersion(c)
	if err != nil {
		return nil, err
	}
	info, err := c.Do("COMMAND")
	if err != nil {
		return nil, fmt.Errorf("COMMAND: %w", err)
	}
	docsReply, err := c.Do("COMMAND", "DOCS")
	if err != nil {
		return nil, fmt.Errorf("COMMAND DOCS: %w", err)
	}
	docs, err := pairs(docsReply)
	if err != nil {
		return nil, fmt.Errorf("COMMAND DOCS: %w", err)
	}
	list, ok := info.([]any)
	if !ok {
		return nil, fmt.Errorf("COMMAND: %w: not an array", errProtocol)
	}
	m := &Metadata{Version: version}
	for _, v := range list {
		cmd, err := parseInfo(v, docs)
		if err != nil {
			return nil, fmt.Errorf("COMMAND: %w", err)
		}
		m.Commands = append(m.Commands, cmd)
	}
	sortCommands(m.Commands)
	return m, nil
}

func serverVersion(c *Client) (string, error) {
	v, err := c.Do("INFO", "server")
	if err != nil {
		return "", fmt.Errorf("INFO server: %w", err)
	}
	s, _ := v.(string)
	for _, line := range strings.Split(s, "\n") {
		if after, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return after, nil
		}
	}
	return "", fmt.Errorf("INFO server: no redis_version")
}

func sortCommands(cs []Command) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	for i := range cs {
		sortCommands(cs[i].Subcommands)
	}
}

// parseInfo reads one COMMAND entry: name, arity, flags, first key, last
// key, step, ACL categories, tips, key specs, subcommands. docs maps each
// name to its COMMAND DOCS entry; a subcommand's docs are inside its
// parent's.
func parseInfo(v any, docs map[string]any) (Command, error) {
	a, ok := v.([]any)
	if !ok || len(a) < 10 {
		return Command{}, fmt.Errorf("%w: entry %v", errProtocol, v)
	}
	var c Command
	var err error
	name, _ := a[0].(string)
	c.Name = strings.ToLower(name)
	ints := []*int{&c.Arity, &c.First, &c.Last, &c.Step}
	for i, idx := range []int{1, 3, 4, 5} {
		n, ok := a[idx].(int64)
		if !ok {
			return c, fmt.Errorf("%w: %s: field %d is %T", errProtocol, c.Name, idx, a[idx])
		}
		*ints[i] = int(n)
	}
	if c.Flags, err = stringList(a[2]); err != nil {
		return c, fmt.Errorf("%s flags: %w", c.Name, err)
	}
	acl, err := stringList(a[6])
	if err != nil {
		return c, fmt.Errorf("%s ACL categories: %w", c.Name, err)
	}
	for _, cat := range acl {
		c.ACL = append(c.ACL, strings.TrimPrefix(cat, "@"))
	}

	doc, err := pairs(docs[c.Name])
	if err != nil {
		return c, fmt.Errorf("%s docs: %w", c.Name, err)
	}
	c.Group, _ = doc["group"].(string)
	c.Since, _ = doc["since"].(string)
	if f, ok := doc["doc_flags"]; ok {
		if c.DocFlags, err = stringList(f); err != nil {
			return c, fmt.Errorf("%s doc flags: %w", c.Name, err)
		}
	}
	subdocs, err := pairs(doc["subcommands"])
	if err != nil {
		return c, fmt.Errorf("%s subcommand docs: %w", c.Name, err)
	}
	subs, _ := a[9].([]any)
	for _, s := range subs {
		sub, err := parseInfo(s, subdocs)
		if err != nil {
			return c, err
		}
		c.Subcommands = append(c.Subcommands, sub)
	}
	return c, nil
}

// pairs reads a RESP2 map (a flat array of keys and values); nil is empty.
func pairs(v any) (map[string]any, error) {
	m := map[string]any{}
	if v == nil {
		return m, nil
	}
	a, ok := v.([]any)
	if !ok || len(a)%2 != 0 {
		return nil, fmt.Errorf("%w: not a map: %v", errProtocol, v)
	}
	for i := 0; i < len(a); i += 2 {
		k, ok := a[i].(string)
		if !ok {
			return nil, fmt.Errorf("%w: map key %v", errProtocol, a[i])
		}
		m[strings.ToLower(k)] = a[i+1]
	}
	return m, nil
}

// stringList reads an array of strings.
func stringList(v any) ([]string, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: not an array: %v", errProtocol, v)
	}
	s := make([]string, len(a))
	for i, x := range a {
		if s[i], ok = x.(string); !ok {
			return nil, fmt.Errorf("%w: not a string: %v", errProtocol, x)
		}
	}
	return s, nil
}
