package proxy

// The command mix of the differential fuzzer (difffuzz_test.go) and the
// model of a Redis connection that says how many replies each frame gets.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// dfTag is what kind of frame a step writes.
type dfTag uint8

const (
	dfCommand   dfTag = iota // a command, RESP or inline
	dfIgnored                // *0, *-1, an empty line: Redis skips it
	dfMalformed              // Redis answers with a protocol error and closes
)

// dfStep is one frame a fuzzed client writes.
type dfStep struct {
	raw  string   // the bytes written
	args []string // the command as Redis parses it (dfCommand only)
	tag  dfTag
	tx   int // >0: the steps from MULTI to its EXEC or DISCARD share it
}

func (s dfStep) String() string {
	if s.args != nil {
		return fmt.Sprintf("%q", strings.Join(s.args, " "))
	}
	return fmt.Sprintf("%q", s.raw)
}

// dfBatch is what a client writes before it waits for the replies.
type dfBatch struct {
	steps  []dfStep
	chunks []int           // the writes, in bytes; they add up to the batch (or to cut)
	pauses []time.Duration // before each chunk; mostly zero
	// cut >= 0: the client writes only cut bytes of the batch, reads for
	// linger, then closes the connection, with a TCP reset if rst (as when
	// a process dies).
	cut    int
	linger time.Duration
	rst    bool
}

func (b dfBatch) bytes() string {
	var sb strings.Builder
	for _, s := range b.steps {
		sb.WriteString(s.raw)
	}
	return sb.String()
}

// sent is how many steps the client writes completely (all of them unless
// the batch is cut).
func (b dfBatch) sent() int {
	if b.cut < 0 {
		return len(b.steps)
	}
	n, end := 0, 0
	for _, s := range b.steps {
		end += len(s.raw)
		if end > b.cut {
			break
		}
		n++
	}
	return n
}

// dfSession is one connection of a client.
type dfSession struct {
	batches []dfBatch
	gen     int // key generation: the prefix of the keys it uses
}

// cut reports whether the client disconnects in the middle of the session.
func (s dfSession) cut() bool { return s.batches[len(s.batches)-1].cut >= 0 }

// dfScript is everything one client does, connection after connection.
type dfScript struct {
	client   int
	sessions []dfSession
}

// dfConn models the state Redis keeps per connection that changes how many
// replies (not counting RESP3 pushes) a command gets, and whether tracking
// is on (which the mix needs to know).
type dfConn struct {
	proto int
	subs  map[string]bool // subscribed channels
	multi bool
	// tracking is CLIENT TRACKING; tracked says it was on at some point on
	// this connection (RESET does not clear it).
	tracking, tracked bool
}

func newDFConn() *dfConn { return &dfConn{proto: 2, subs: map[string]bool{}} }

// subscribedOnly are the commands RESP2 allows while subscribed.
var subscribedOnly = map[string]bool{
	"subscribe": true, "unsubscribe": true, "psubscribe": true, "punsubscribe": true,
	"ssubscribe": true, "sunsubscribe": true, "ping": true, "quit": true, "reset": true,
}

// apply returns how many non-push frames Redis answers s with and whether it
// then closes the connection, and updates the model. The mix never puts
// (UN)SUBSCRIBE or HELLO inside MULTI, so apply need not model that.
func (m *dfConn) apply(s dfStep) (replies int, closes bool) {
	switch s.tag {
	case dfIgnored:
		return 0, false
	case dfMalformed:
		return 1, true
	}
	name := strings.ToLower(s.args[0])
	switch {
	case name == "quit":
		return 1, true
	case name == "reset":
		tracked := m.tracked
		*m = *newDFConn()
		m.tracked = tracked
		return 1, false
	case m.proto == 2 && len(m.subs) > 0 && !subscribedOnly[name]:
		return 1, false // "only (P|S)SUBSCRIBE / ... are allowed in this context"
	case m.multi:
		if name == "exec" || name == "discard" {
			m.multi = false
		}
		return 1, false // QUEUED or an error
	}
	switch name {
	case "multi":
		m.multi = true
	case "client":
		if strings.EqualFold(s.args[1], "tracking") {
			m.tracking = strings.EqualFold(s.args[2], "on")
			m.tracked = m.tracked || m.tracking
		}
	case "hello":
		if v := s.args[1]; v == "2" || v == "3" {
			m.proto = int(v[0] - '0')
		}
	case "subscribe", "unsubscribe":
		chans := s.args[1:]
		if name == "subscribe" && len(chans) == 0 {
			return 1, false // wrong number of arguments
		}
		n := len(chans)
		if name == "subscribe" {
			for _, c := range chans {
				m.subs[c] = true
			}
		} else if n == 0 {
			n = max(1, len(m.subs)) // one confirmation per channel, or one saying none
			clear(m.subs)
		} else {
			for _, c := range chans {
				delete(m.subs, c)
			}
		}
		if m.proto == 3 {
			return 0, false // confirmations are pushes
		}
		return n, false
	}
	return 1, false
}

// dfMix selects the commands a script draws from.
type dfMix uint8

const (
	// mixFull is every kind of command, compared byte for byte with Redis.
	mixFull dfMix = iota
	// mixPinning is RESP2 transactions and blocking commands that compete for
	// a few dedicated connections; each step gets exactly one reply.
	mixPinning
)

// dfGen writes one client's script.
type dfGen struct {
	rng    *rand.Rand
	client int
	mix    dfMix
	gen    int // current key generation
	seq    int // makes every value unique
	tx     int
	model  *dfConn
}

// genScript draws client's script: about steps frames, from seed.
func genScript(seed uint64, client, steps int, mix dfMix) dfScript {
	g := &dfGen{rng: rand.New(rand.NewPCG(seed, uint64(client))), client: client, mix: mix}
	sc := dfScript{client: client}
	for budget := steps; budget > 0; {
		sc.sessions = append(sc.sessions, g.session(&budget))
	}
	return sc
}

// session draws one connection's batches. A session ends with QUIT, a
// protocol error or a cut; a cut leaves the keys' state uncertain, so the
// next session uses a new generation of keys.
func (g *dfGen) session(budget *int) dfSession {
	g.model = newDFConn()
	sess := dfSession{gen: g.gen}
	var queue []dfStep
	for {
		b := dfBatch{cut: -1}
		size := 1 + g.rng.IntN(6)
		if g.rng.IntN(3) == 0 {
			size = 1
		}
		closed := false
		for len(b.steps) < size && !closed {
			if *budget <= 0 {
				queue = []dfStep{g.command("QUIT")}
			}
			if len(queue) == 0 {
				queue = g.next()
			}
			s := queue[0]
			queue = queue[1:]
			_, closed = g.model.apply(s)
			b.steps = append(b.steps, s)
			*budget--
		}
		g.plan(&b, closed)
		sess.batches = append(sess.batches, b)
		if b.cut >= 0 {
			g.gen++
			return sess
		}
		if closed {
			return sess
		}
	}
}

// plan splits the batch into writes and sometimes cuts it, more often when
// it may leave the client blocked.
func (g *dfGen) plan(b *dfBatch, closes bool) {
	n := len(b.bytes())
	odds := 40
	if slices.ContainsFunc(b.steps, func(s dfStep) bool { return s.args != nil && blocking[strings.ToLower(s.args[0])] }) {
		odds = 6
	}
	if g.mix == mixFull && !closes && g.rng.IntN(odds) == 0 {
		b.cut = g.rng.IntN(n + 1)
		if g.rng.IntN(2) == 0 {
			b.cut = n // everything written; close while replies (or a block) are owed
		}
		b.linger = time.Duration(g.rng.IntN(20)) * time.Millisecond * time.Duration(g.rng.IntN(2)) // often none
		b.rst = g.rng.IntN(2) == 0
		n = b.cut
	}
	switch r := g.rng.IntN(10); {
	case r < 5 || n < 2:
		b.chunks = []int{n}
	case r < 8: // a few random pieces
		b.chunks = splitAt(g.rng, n, 1+g.rng.IntN(4))
	default: // many small pieces (bounded for big values)
		b.chunks = splitAt(g.rng, n, min(n-1, 64))
	}
	b.pauses = make([]time.Duration, len(b.chunks))
	for i := range b.pauses {
		if i > 0 && g.rng.IntN(8) == 0 {
			b.pauses[i] = time.Duration(g.rng.IntN(2000)) * time.Microsecond
		}
	}
}

// splitAt cuts n bytes into k+1 non-empty pieces (fewer when n is small).
func splitAt(rng *rand.Rand, n, k int) []int {
	cuts := map[int]bool{}
	for range k {
		cuts[1+rng.IntN(n-1)] = true
	}
	var out []int
	last := 0
	for i := 1; i < n; i++ {
		if cuts[i] {
			out = append(out, i-last)
			last = i
		}
	}
	return append(out, n-last)
}

// pick calls one of the weighted choices.
func (g *dfGen) pick(choices []dfChoice) []dfStep {
	total := 0
	for _, c := range choices {
		total += c.weight
	}
	r := g.rng.IntN(total)
	for _, c := range choices {
		if r < c.weight {
			return c.steps(g)
		}
		r -= c.weight
	}
	panic("unreachable")
}

type dfChoice struct {
	weight int
	steps  func(*dfGen) []dfStep
}

// next draws the next steps: one command or a short sequence that belongs
// together (a transaction, a tracking round trip).
func (g *dfGen) next() []dfStep {
	if g.mix == mixPinning {
		return g.pick(pinningMix)
	}
	if g.model.proto == 2 && len(g.model.subs) > 0 && g.rng.IntN(2) == 0 {
		return g.pick(subscribedMix) // mostly what RESP2 allows while subscribed
	}
	return g.pick(fullMix)
}

var fullMix = []dfChoice{
	{300, func(g *dfGen) []dfStep { return []dfStep{g.plain()} }},
	{70, (*dfGen).transaction},
	{35, (*dfGen).tracking},
	{45, (*dfGen).pubsub},
	{50, (*dfGen).blocking},
	{60, (*dfGen).state},
	{20, func(g *dfGen) []dfStep { return []dfStep{g.command(g.oneOf("QUIT", "RESET"))} }},
	{40, (*dfGen).frames},
}

var subscribedMix = []dfChoice{
	{3, func(g *dfGen) []dfStep { return []dfStep{g.command("PING", g.oneOf("", g.value()))} }},
	{2, func(g *dfGen) []dfStep { return []dfStep{g.channelCommand("UNSUBSCRIBE", 0)} }},
	{1, func(g *dfGen) []dfStep { return []dfStep{g.channelCommand("SUBSCRIBE", 1)} }},
	{1, func(g *dfGen) []dfStep { return []dfStep{g.command(g.oneOf("QUIT", "RESET"))} }},
}

var pinningMix = []dfChoice{
	{5, func(g *dfGen) []dfStep { return []dfStep{g.plain()} }},
	{3, (*dfGen).pinnedTransaction},
	{2, func(g *dfGen) []dfStep {
		return []dfStep{g.command("BLPOP", g.key("empty"), g.oneOf("0.02", "0.05"))}
	}},
}

// command encodes args as RESP; empty arguments are dropped.
func (g *dfGen) command(args ...string) dfStep {
	var kept []string
	for _, a := range args {
		if a != "" {
			kept = append(kept, a)
		}
	}
	if g.rng.IntN(10) == 0 { // Redis ignores case; so must the proxy
		kept[0] = strings.ToLower(kept[0])
	}
	return dfStep{raw: cmd(kept...), args: kept}
}

func (g *dfGen) oneOf(s ...string) string { return s[g.rng.IntN(len(s))] }

// key names one of the client's keys in the current generation.
func (g *dfGen) key(name string) string { return fmt.Sprintf("c%d:%d:%s", g.client, g.gen, name) }

// value is unique and carries the client's namespace.
func (g *dfGen) value() string {
	g.seq++
	v := fmt.Sprintf("c%d:v%d", g.client, g.seq)
	if g.rng.IntN(50) == 0 {
		v += strings.Repeat("x", g.rng.IntN(40000)) // a reply larger than a read buffer
	}
	return v
}

// channel names one of the client's two channels of the current key
// generation: a PUBLISH still in flight when a connection was cut cannot
// reach the subscriptions of the next one.
func (g *dfGen) channel() string { return g.key(g.oneOf("ch1", "ch2")) }

// channelCommand is name with at least `least` (0 or 1) of the client's two
// channels.
func (g *dfGen) channelCommand(name string, least int) dfStep {
	args := []string{name, g.key("ch1"), g.key("ch2")}
	return g.command(args[:1+least+g.rng.IntN(3-least)]...)
}

// anyKey is mostly a key of the right type, sometimes another (WRONGTYPE).
func (g *dfGen) anyKey(names ...string) string {
	if g.rng.IntN(10) == 0 {
		names = []string{"s1", "s2", "n1", "h1", "l1", "l2", "z1", "x1"}
	}
	return g.key(g.oneOf(names...))
}

// plain draws a command on the client's own keys that leaves no state on
// the connection.
func (g *dfGen) plain() dfStep {
	s, n, h, l, z := g.anyKey("s1", "s2"), g.anyKey("n1"), g.anyKey("h1"), g.anyKey("l1", "l2"), g.anyKey("z1")
	switch g.rng.IntN(22) {
	case 0:
		return g.command("SET", s, g.value())
	case 1:
		return g.command("GET", s)
	case 2:
		return g.command("INCR", n)
	case 3:
		return g.command("APPEND", s, g.value())
	case 4:
		return g.command("DEL", s, g.anyKey("n1", "h1", "l1"))
	case 5:
		return g.command("HSET", h, g.oneOf("f1", "f2", "f3"), g.value())
	case 6:
		return g.command("HGETALL", h)
	case 7:
		return g.command(g.oneOf("LPUSH", "RPUSH"), l, g.value(), g.oneOf("", g.value()))
	case 8:
		return g.command("LRANGE", l, "0", "-1")
	case 9:
		return g.command("SADD", z, g.value())
	case 10:
		return g.command("SMEMBERS", z)
	case 11:
		return g.command("EXPIRE", s, "100000") // TTL only follows PERSIST: its reply then does not depend on the clock
	case 12:
		return g.command("PERSIST", s)
	case 13:
		return g.command("MGET", s, g.anyKey("s1", "s2"), n)
	case 14:
		return g.command("ECHO", g.value())
	case 15:
		return g.command("PING", g.oneOf("", g.value()))
	case 16:
		return g.command(g.oneOf("EXEC", "DISCARD")) // without MULTI
	case 17:
		g.seq++
		return g.command("XADD", g.anyKey("x1"), fmt.Sprintf("%d-1", g.seq), "f", g.value())
	case 18:
		return g.command("XRANGE", g.anyKey("x1"), "-", "+")
	case 19:
		return g.command("PUBLISH", g.channel(), g.value())
	case 20:
		return g.command("LLEN", l)
	}
	return g.command("HGET", h, g.oneOf("f1", "f2"))
}

// transaction draws MULTI … EXEC|DISCARD, sometimes after WATCH (and a
// write of the watched key by the same client, which aborts the EXEC), with
// queuing errors, a nested MULTI, or QUIT/RESET in the middle.
func (g *dfGen) transaction() []dfStep {
	var steps []dfStep
	if g.rng.IntN(3) == 0 {
		k := g.anyKey("s1", "n1")
		steps = append(steps, g.command("WATCH", k))
		if g.rng.IntN(2) == 0 {
			steps = append(steps, g.command("SET", k, g.value()))
		}
	}
	steps = append(steps, g.command("MULTI"))
	for range 1 + g.rng.IntN(4) {
		switch g.rng.IntN(12) {
		case 0:
			steps = append(steps, g.command(g.oneOf("NOSUCHCMD", "GET", "WATCH"), g.key("s1")))
		case 1:
			steps = append(steps, g.command("GET")) // wrong arity
		case 2:
			steps = append(steps, g.command("MULTI"))
		case 3:
			steps = append(steps, g.command("SELECT", g.oneOf("0", "1", "2")))
		case 4:
			if g.rng.IntN(4) == 0 {
				steps = append(steps, g.command(g.oneOf("QUIT", "RESET")))
			}
		default:
			s := g.plain()
			for strings.EqualFold(s.args[0], "PUBLISH") {
				// Redis 7.0 puts the message to a subscribed RESP3
				// client inside EXEC's reply array: invalid RESP.
				s = g.plain()
			}
			steps = append(steps, s)
		}
	}
	return append(steps, g.command(g.oneOf("EXEC", "EXEC", "DISCARD")))
}

// tracking reads a key with client tracking on and then changes it: in RESP3
// the client gets an invalidation push caused by its own write.
//
// Tracking is not turned on again once turned off on a connection: Redis
// then still invalidates keys read before, for the same connection id, which
// a proxy that moved the client to another upstream connection rightly
// does not reproduce.
func (g *dfGen) tracking() []dfStep {
	if g.model.tracked && !g.model.tracking {
		return []dfStep{g.plain()}
	}
	k := g.key("s1")
	steps := []dfStep{
		g.command("CLIENT", "TRACKING", "ON"),
		g.command("GET", k),
		g.command("SET", k, g.value()),
	}
	if g.rng.IntN(2) == 0 {
		steps = append(steps, g.command("GET", k), g.command("CLIENT", "TRACKING", "OFF"))
	}
	return steps
}

// pubsub subscribes to the client's own channels; in RESP3 the client also
// publishes to them (in RESP2 it could not while subscribed).
func (g *dfGen) pubsub() []dfStep {
	steps := []dfStep{g.channelCommand("SUBSCRIBE", 1)}
	if g.model.proto == 3 {
		steps = append(steps, g.command("PUBLISH", steps[0].args[1], g.value()))
		if g.rng.IntN(2) == 0 {
			steps = append(steps, g.channelCommand("UNSUBSCRIBE", 0))
		}
	}
	return steps
}

// blocking are the commands of the mix that may block.
var blocking = map[string]bool{"blpop": true, "brpop": true, "blmove": true, "blmpop": true, "xread": true}

// blocking draws a blocking command with a short timeout, on an empty key
// (it times out) or after a push (it returns at once).
func (g *dfGen) blocking() []dfStep {
	var steps []dfStep
	l1, l2 := g.key("l1"), g.key("l2")
	if g.rng.IntN(2) == 0 {
		steps = append(steps, g.command("RPUSH", l1, g.value()))
	}
	timeout := g.oneOf("0.01", "0.02", "0.05", "0.1")
	switch g.rng.IntN(5) {
	case 0:
		steps = append(steps, g.command("BLPOP", l1, timeout))
	case 1:
		steps = append(steps, g.command("BRPOP", l2, l1, timeout))
	case 2:
		steps = append(steps, g.command("BLMOVE", l1, l2, "LEFT", "RIGHT", timeout))
	case 3:
		steps = append(steps, g.command("BLMPOP", timeout, "1", l1, "LEFT"))
	default:
		count := g.oneOf("", "2")
		if count != "" {
			count = "COUNT " + count
		}
		steps = append(steps, g.command(strings.Fields("XREAD "+count+" BLOCK 10 STREAMS "+g.key("x1")+" "+g.oneOf("0", "$"))...))
	}
	return steps
}

// state draws a command that changes the connection: SELECT, CLIENT
// SETNAME/GETNAME, HELLO 2|3, PERSIST+TTL on a key of the new database; or a
// CLIENT KILL/UNBLOCK that names no client (malformed or not), which must
// be answered as Redis answers it in every mode, subscribed included.
func (g *dfGen) state() []dfStep {
	switch g.rng.IntN(6) {
	case 5:
		return []dfStep{g.command(strings.Fields(g.oneOf(
			"CLIENT KILL ID 99999999", "CLIENT KILL 10.9.9.9:1", "CLIENT KILL ADDR 10.9.9.9:1 SKIPME no",
			"CLIENT KILL ID 99999999 TYPE nosuchtype", "CLIENT KILL ID 0", "CLIENT KILL ID 5 USER",
			"CLIENT UNBLOCK 99999999", "CLIENT UNBLOCK 99999999 ERROR", "CLIENT UNBLOCK x"))...)}
	case 0:
		return []dfStep{g.command("SELECT", g.oneOf("0", "1", "2", "3"))}
	case 1:
		g.seq++
		return []dfStep{g.command("CLIENT", "SETNAME", fmt.Sprintf("c%d:name%d", g.client, g.seq))}
	case 2:
		return []dfStep{g.command("CLIENT", "GETNAME")}
	case 3:
		k := g.anyKey("s1", "s2")
		return []dfStep{g.command("PERSIST", k), g.command("TTL", k)}
	}
	return []dfStep{g.command("HELLO", g.oneOf("2", "3", "3"))}
}

// malformed frames end at the byte where Redis detects the error, so a
// client cut short never triggers it with part of a frame.
var malformed = []string{
	"*1\r\n$-5\r\n",
	"*1\r\n$9223372036854775807\r\n",
	"*1\r\n$+4\r\n",
	"*01\r\n",
	"*-0\r\n",
	"*1\r\nPING\r\n",
}

// frames draws unusual framing: malformed input, frames Redis ignores,
// inline commands and a bulk whose CRLF Redis does not check.
func (g *dfGen) frames() []dfStep {
	switch g.rng.IntN(20) {
	case 0:
		return []dfStep{{raw: g.oneOf(malformed...), tag: dfMalformed}}
	case 1:
		return []dfStep{{raw: "SET \"" + g.key("s1") + "\r\n", tag: dfMalformed}} // unbalanced quotes
	case 2, 3, 4, 5:
		return []dfStep{{raw: g.oneOf("*0\r\n", "*-1\r\n", "*-3\r\n", "\r\n", "\n"), tag: dfIgnored}}
	case 6:
		// Redis takes the 4 bytes after "$4\r\n" and skips the next 2
		// whatever they are; the CRLF that follows is an empty inline line.
		return []dfStep{
			{raw: "*1\r\n$4\r\nPINGxx", args: []string{"PING"}},
			{raw: "\r\n", tag: dfIgnored},
		}
	}
	k, v := g.key("s1"), g.value()
	args := [][]string{{"PING"}, {"SET", k, v}, {"GET", k}, {"ECHO", v + " x"}}[g.rng.IntN(4)]
	raw := strings.Join(args, " ")
	if len(args) == 2 && args[0] == "ECHO" {
		raw = `ECHO "` + args[1] + `"` // a quoted argument with a space
	}
	return []dfStep{{raw: raw + g.oneOf("\r\n", "\n"), args: args}}
}

// pinnedTransaction writes a key no other step touches, so whether the
// transaction ran is visible in Redis afterwards.
func (g *dfGen) pinnedTransaction() []dfStep {
	g.tx++
	steps := []dfStep{g.command("MULTI"), g.command("SET", g.key(fmt.Sprintf("t%d", g.tx)), g.value())}
	if g.rng.IntN(2) == 0 {
		steps = append(steps, g.command("INCR", g.key("n1")))
	}
	steps = append(steps, g.command(g.oneOf("EXEC", "EXEC", "DISCARD")))
	for i := range steps {
		steps[i].tx = g.tx
	}
	return steps
}
