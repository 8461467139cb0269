package proxy

// A differential, concurrent fuzzer. Every client runs a random script
// (difffuzz_gen_test.go) in its own namespace: keys and channels c<N>:<G>:…
// (G changes after each connection the client cut, whose in-flight commands
// may run late), values carrying N and a sequence number. The scripts first
// run on plain TCP connections straight to Redis, which records Redis's
// answers; after FLUSHALL they run again, all clients at once, through the
// proxy over mTLS, written in random pieces. Both runs use the same
// redis-server, so even orders that depend on the process's hash seed (a
// set's members) are the same.
//
// Checked: every frame equals Redis's byte for byte (a cut connection: what
// arrived is a prefix of it) and Redis closes where it closes; no frame
// holds another client's namespace; each client's keys end as after the
// direct run (after a cut: as after some prefix of what was written, at
// least up to the last reply received); subscriptions end with their
// connection; the proxy logs no panic; the heap, after GC, grows by less
// than dfHeapGrowth. The max-pinned-4 variant cannot be compared with Redis
// (the proxy refuses some dedicated connections): it checks that a refused
// MULTI has every command up to its EXEC/DISCARD refused and no effect.
//
// The only normalisation: the connection id in HELLO's reply is replaced by
// a placeholder. It differs from one connection to the next, through the
// proxy or not; no other reply in the mix depends on the connection.
//
// DIFFFUZZ_SEED=n repeats a run (the seeds are logged), DIFFFUZZ_CLIENTS
// and DIFFFUZZ_STEPS size it, DIFFFUZZ_DURATION runs TestDiffFuzzLong. A
// failure prints the client's writes, piece by piece, and the frames around
// the first difference, then a minimal reproduction found by rerunning that
// client alone against a new proxy.

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

const (
	// dfReplyWait bounds the wait for a reply that is owed (blocking
	// commands in the mix wait at most 0.1 s).
	dfReplyWait = 10 * time.Second
	// dfHeapGrowth bounds how much the heap, after GC, may grow over a
	// round: the proxy keeps nothing per finished client, so what remains is
	// its idle pooled connections and the test's own transcripts. Measured:
	// 1 to 3 MiB for 16 clients of 150 frames; a few KiB leaked per
	// connection or per command would pass it.
	dfHeapGrowth = 16 << 20
	// dfMinimiseClients is how many failed clients get a minimal
	// reproduction, each within dfMinimiseTime.
	dfMinimiseClients = 4
	dfMinimiseTime    = 30 * time.Second
)

// dfVariant is one configuration of the fuzzer.
type dfVariant struct {
	name    string
	mix     dfMix
	seed    uint64
	clients int
	steps   int // frames per client
	edit    func(*config.Config)
	// redisItself runs the second run straight against Redis too.
	redisItself bool
}

func TestDiffFuzzShort(t *testing.T) {
	rs := testredis.Start(t, testredis.Options{})
	for _, v := range dfVariants(t, 0) {
		t.Run(v.name, func(t *testing.T) { runDiffFuzz(t, rs, v) })
	}
}

// TestDiffFuzzLong repeats the variants with new seeds for
// DIFFFUZZ_DURATION (make fuzz).
func TestDiffFuzzLong(t *testing.T) {
	d := os.Getenv("DIFFFUZZ_DURATION")
	if d == "" {
		t.Skip("set DIFFFUZZ_DURATION (e.g. 5m) to run")
	}
	limit, err := time.ParseDuration(d)
	if err != nil {
		t.Fatalf("DIFFFUZZ_DURATION=%q: %v", d, err)
	}
	rs := testredis.Start(t, testredis.Options{})
	for round, end := 1, time.Now().Add(limit); time.Now().Before(end) && !t.Failed(); round++ {
		for _, v := range dfVariants(t, round) {
			t.Run(fmt.Sprintf("%s/round%d", v.name, round), func(t *testing.T) { runDiffFuzz(t, rs, v) })
		}
	}
}

// dfVariants returns the variants of a round. DIFFFUZZ_SEED sets every
// seed; otherwise round 0 uses fixed seeds for full and max-pinned-4 and a
// random one for one-shared-conn and redis-itself (the fuzzer's check of
// itself, on the same scripts), later rounds random seeds.
func dfVariants(t *testing.T, round int) []dfVariant {
	clients, steps := dfEnvInt(t, "DIFFFUZZ_CLIENTS", 16), dfEnvInt(t, "DIFFFUZZ_STEPS", 150)
	seeds := []uint64{1, rand.Uint64(), 2}
	if round > 0 {
		seeds = []uint64{rand.Uint64(), rand.Uint64(), rand.Uint64()}
	}
	if s := os.Getenv("DIFFFUZZ_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DIFFFUZZ_SEED=%q: %v", s, err)
		}
		seeds = []uint64{n, n, n}
	}
	return []dfVariant{
		{name: "redis-itself", mix: mixFull, seed: seeds[1], clients: clients, steps: steps, redisItself: true},
		{name: "full", mix: mixFull, seed: seeds[0], clients: clients, steps: steps},
		{name: "one-shared-conn", mix: mixFull, seed: seeds[1], clients: clients, steps: steps,
			edit: func(c *config.Config) { c.Upstream.Pool.MaxSize = 1 }},
		{name: "max-pinned-4", mix: mixPinning, seed: seeds[2], clients: clients, steps: steps,
			edit: func(c *config.Config) {
				c.Upstream.Pool.MaxPinned = 4
				c.Upstream.DialTimeout = 50 * time.Millisecond // how long a MULTI waits for a free slot
			}},
	}
}

func dfEnvInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// runDiffFuzz runs one variant: Redis alone, then the proxy, then compares.
func runDiffFuzz(t *testing.T, rs *testredis.Server, v dfVariant) {
	t.Logf("seed %d (reproduce: DIFFFUZZ_SEED=%d go test -race -count=1 -run 'TestDiffFuzzShort/^%s$' ./proxy/)",
		v.seed, v.seed, v.name)
	ctx := context.Background()
	scripts := make([]dfScript, v.clients)
	for i := range scripts {
		scripts[i] = genScript(v.seed, i, v.steps, v.mix)
	}
	check := redis.NewClient(&redis.Options{Addr: rs.Addr, Protocol: 2, PoolSize: 1})
	defer check.Close()
	if err := check.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	var want []dfWant
	if v.mix == mixFull {
		want = dfReplayAll(t, rs.Addr, scripts)
		dfLogStats(t, scripts, want)
		if err := check.FlushAll(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var clients []*dfClient
	t.Run("through-proxy", func(t *testing.T) {
		clients = dfRunProxy(t, rs, v, scripts, want)
	})
	// The proxy has stopped; once Redis has seen its connections close,
	// every command it forwarded has run.
	waitFor(t, "the proxy's connections to Redis to close", func() bool {
		return rejInfoInt(t, check, "clients", "connected_clients") == 1
	})
	var failed []*dfClient
	for _, c := range clients {
		if c.fail != nil {
			t.Error(c.report(v))
			failed = append(failed, c)
			continue
		}
		if v.mix == mixFull {
			c.checkState(t, check, want[c.sc.client])
		} else {
			c.checkPinning(t, check)
		}
	}
	if len(failed) > 0 && v.mix == mixFull {
		t.Run("minimise", func(t *testing.T) { dfMinimiseAll(t, rs, v, failed[:min(len(failed), dfMinimiseClients)]) })
	}
}

// dfLogStats logs what the scripts exercised.
func dfLogStats(t *testing.T, scripts []dfScript, want []dfWant) {
	var conns, cuts, closes, steps, frames, pushes int
	for i, sc := range scripts {
		for si, sess := range sc.sessions {
			conns++
			if sess.cut() {
				cuts++
			}
			for _, b := range sess.batches {
				steps += len(b.steps)
			}
			sw := want[i].sessions[si]
			if sw.closed {
				closes++
			}
			frames += len(sw.frames)
			pushes += sw.marks[len(sw.marks)-1].pushes
		}
	}
	t.Logf("%d clients, %d connections (%d cut by the client, %d closed by Redis), %d frames written, Redis sent %d frames (%d pushes)",
		len(scripts), conns, cuts, closes, steps, frames, pushes)
}

// dfRunProxy starts a proxy and runs every client through it at once. With
// v.redisItself the clients talk to Redis directly instead: a check of the
// fuzzer itself (Redis must match Redis).
func dfRunProxy(t *testing.T, rs *testredis.Server, v dfVariant, scripts []dfScript, want []dfWant) []*dfClient {
	heapBefore := dfHeap()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	dial := func() (net.Conn, error) { return dialer.Dial("tcp", rs.Addr) }
	var e *proxyEnv
	if !v.redisItself {
		e = startProxy(t, newPKI(t), "redis://"+rs.Addr, v.edit)
		tlsConf := e.pki.clientTLS()
		dial = func() (net.Conn, error) { return tls.DialWithDialer(dialer, "tcp", e.addr, tlsConf) }
	}
	direct := redis.NewClient(&redis.Options{Addr: rs.Addr, Protocol: 2, PoolSize: len(scripts)})
	defer direct.Close()
	clients := make([]*dfClient, len(scripts))
	var wg sync.WaitGroup
	for i, sc := range scripts {
		clients[i] = &dfClient{sc: sc, dial: dial, direct: direct}
		if want != nil {
			clients[i].want = want[i]
		}
		wg.Go(clients[i].run)
	}
	wg.Wait()
	heapAfter := dfHeap()
	t.Logf("heap after GC: %.1f MiB before the proxy started, %.1f MiB once its clients were done", float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	if grown := int64(heapAfter) - int64(heapBefore); grown > dfHeapGrowth {
		t.Errorf("heap after GC grew by %d MiB over the round (bound %d MiB)", grown>>20, dfHeapGrowth>>20)
	}
	if e != nil {
		for _, line := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(line, "panic") {
				t.Errorf("the proxy logged a panic: %s", line)
			}
		}
	}
	return clients
}

func dfHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// dfCount counts frames: replies, and RESP3 pushes apart.
type dfCount struct{ replies, pushes int }

// dfReader reads whole RESP frames with its own small parser: the proxy's
// reply scanner is under test, so the oracle does not share it.
type dfReader struct {
	nc     net.Conn
	br     *bufio.Reader
	frames [][]byte
	count  dfCount
	closed bool // the peer closed the connection
}

func newDFReader(nc net.Conn) *dfReader { return &dfReader{nc: nc, br: bufio.NewReader(nc)} }

func (r *dfReader) readFrame(deadline time.Time) error {
	r.nc.SetReadDeadline(deadline)
	f, err := dfReadValue(r.br, nil)
	if err != nil {
		r.closed = errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
		return err
	}
	r.frames = append(r.frames, f)
	if f[0] == '>' {
		r.count.pushes++
	} else {
		r.count.replies++
	}
	return nil
}

// until reads until at least want frames of each kind have arrived.
func (r *dfReader) until(want dfCount, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for r.count.replies < want.replies || r.count.pushes < want.pushes {
		if err := r.readFrame(deadline); err != nil {
			return err
		}
	}
	return nil
}

// toClose reads frames until the peer closes the connection.
func (r *dfReader) toClose(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if err := r.readFrame(deadline); err != nil {
			if r.closed {
				return nil
			}
			return err
		}
	}
}

// dfReadValue appends one RESP2/RESP3 value read from br to out.
func dfReadValue(br *bufio.Reader, out []byte) ([]byte, error) {
	line, err := br.ReadBytes('\n')
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return out, err
	}
	out = append(out, line...)
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return out, fmt.Errorf("not a RESP line: %q", line)
	}
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	switch line[0] {
	case '+', '-', ':', ',', '(', '_', '#':
		return out, nil
	case '$', '!', '=', '*', '~', '>', '%', '|':
		if err != nil || n < -1 {
			return out, fmt.Errorf("bad length in %q", line)
		}
	default:
		return out, fmt.Errorf("unknown RESP type in %q", line)
	}
	switch line[0] {
	case '$', '!', '=':
		if n >= 0 {
			body := make([]byte, n+2)
			_, err := io.ReadFull(br, body)
			return append(out, body...), err
		}
	case '%', '|':
		n *= 2
	}
	if line[0] == '|' {
		n++ // the value an attribute decorates
	}
	for range n {
		if out, err = dfReadValue(br, out); err != nil {
			return out, err
		}
	}
	return out, nil
}

// dfWrite writes a batch (up to its cut) in its planned pieces.
func dfWrite(nc net.Conn, b dfBatch) error {
	data := b.bytes()
	if b.cut >= 0 {
		data = data[:b.cut]
	}
	off := 0
	for i, n := range b.chunks {
		time.Sleep(b.pauses[i])
		nc.SetWriteDeadline(time.Now().Add(dfReplyWait))
		if _, err := io.WriteString(nc, data[off:off+n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

var (
	helloID   = regexp.MustCompile(`\$2\r\nid\r\n:[0-9]+\r\n`)
	namespace = regexp.MustCompile(`c([0-9]+):`)
)

// dfNormal replaces the connection id in HELLO's reply.
func dfNormal(frame []byte) string {
	return helloID.ReplaceAllString(string(frame), "$$2\r\nid\r\n:<id>\r\n")
}

// foreign returns the first other client's namespace found in frame.
func foreign(frame []byte, client int) string {
	for _, m := range namespace.FindAllSubmatch(frame, -1) {
		if n, _ := strconv.Atoi(string(m[1])); n != client {
			return string(m[0])
		}
	}
	return ""
}

// dfSnapshot is the state of the keys with prefix in databases 0 to 3: per
// "db/key", whether it expires and DUMP's serialisation.
func dfSnapshot(ctx context.Context, c *redis.Client, prefix string) (map[string]string, error) {
	conn := c.Conn()
	defer conn.Close()
	defer conn.Select(ctx, 0) // as the pool expects it
	st := map[string]string{}
	for db := range 4 {
		if err := conn.Select(ctx, db).Err(); err != nil {
			return nil, err
		}
		keys, err := conn.Keys(ctx, prefix+"*").Result()
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			dump, err := conn.Dump(ctx, k).Result()
			if err != nil {
				return nil, err
			}
			pttl, err := conn.Do(ctx, "PTTL", k).Int64()
			if err != nil {
				return nil, err
			}
			st[fmt.Sprintf("%d/%s", db, k)] = fmt.Sprintf("expires=%v %q", pttl >= 0, dump)
		}
	}
	return st, nil
}

// genPrefix is the prefix of the keys of a client's generation.
func genPrefix(client, gen int) string { return fmt.Sprintf("c%d:%d:", client, gen) }

// dfWant is what Redis answered one client, session by session.
type dfWant struct {
	sessions []dfSessionWant
	final    map[int]map[string]string // per key generation, the keys at the end
}

type dfSessionWant struct {
	frames [][]byte
	marks  []dfCount // per batch: the frames counted once its replies were in
	closed bool      // Redis closed the connection (QUIT, protocol error)
	// A cut session: the replies counted after each step of the cut batch
	// written whole, and the generation's keys before that batch and after
	// each of those steps.
	stepReplies []int
	states      []map[string]string
}

// dfReplayAll runs every script straight against Redis (in parallel: the
// clients share nothing).
func dfReplayAll(t *testing.T, addr string, scripts []dfScript) []dfWant {
	direct := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, PoolSize: len(scripts)})
	defer direct.Close()
	want := make([]dfWant, len(scripts))
	errs := make([]error, len(scripts))
	var wg sync.WaitGroup
	for i, sc := range scripts {
		wg.Go(func() { want[i], errs[i] = dfReplay(addr, direct, sc, dfReplyWait) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("client %d straight to Redis: %v (a bug in the fuzzer's model of Redis)", i, err)
		}
	}
	return want
}

func dfReplay(addr string, direct *redis.Client, sc dfScript, wait time.Duration) (dfWant, error) {
	ctx := context.Background()
	w := dfWant{final: map[int]map[string]string{}}
	for si, sess := range sc.sessions {
		sw, err := dfReplaySession(ctx, addr, direct, sc.client, sess, wait)
		if err != nil {
			return w, fmt.Errorf("session %d: %w", si, err)
		}
		w.sessions = append(w.sessions, sw)
		if err := dfUnsubscribed(ctx, direct, sc.client, sess.gen); err != nil {
			return w, err
		}
	}
	for _, sess := range sc.sessions {
		st, err := dfSnapshot(ctx, direct, genPrefix(sc.client, sess.gen))
		if err != nil {
			return w, err
		}
		w.final[sess.gen] = st
	}
	return w, nil
}

func dfReplaySession(ctx context.Context, addr string, direct *redis.Client, client int, sess dfSession, wait time.Duration) (dfSessionWant, error) {
	var w dfSessionWant
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return w, err
	}
	defer nc.Close()
	r := newDFReader(nc)
	m := newDFConn()
	var owed dfCount
	// step writes one step (or a whole batch) and reads what it is owed.
	step := func(steps ...dfStep) error {
		closes := false
		for _, s := range steps {
			n, c := m.apply(s)
			owed.replies += n
			closes = closes || c
			if _, err := io.WriteString(nc, s.raw); err != nil {
				return err
			}
		}
		if !closes {
			return r.until(owed, wait)
		}
		w.closed = true
		if err := r.toClose(wait); err != nil {
			return err
		}
		if r.count.replies != owed.replies {
			return fmt.Errorf("the model expects %d replies, Redis sent %d before closing", owed.replies, r.count.replies)
		}
		return nil
	}
	for bi, b := range sess.batches {
		if b.cut < 0 {
			if err := step(b.steps...); err != nil {
				return w, fmt.Errorf("batch %d: %w", bi, err)
			}
			w.marks = append(w.marks, r.count)
			continue
		}
		st, err := dfSnapshot(ctx, direct, genPrefix(client, sess.gen))
		if err != nil {
			return w, err
		}
		w.states = append(w.states, st)
		for _, s := range b.steps[:b.sent()] {
			if err := step(s); err != nil {
				return w, fmt.Errorf("batch %d (cut), step %s: %w", bi, s, err)
			}
			w.stepReplies = append(w.stepReplies, r.count.replies)
			if st, err = dfSnapshot(ctx, direct, genPrefix(client, sess.gen)); err != nil {
				return w, err
			}
			w.states = append(w.states, st)
			if w.closed {
				break
			}
		}
		if !w.closed {
			// A barrier: once PING is answered, everything the written
			// steps caused (pushes too) has arrived.
			if err := step(dfStep{raw: "PING\r\n", args: []string{"PING"}}); err != nil {
				return w, fmt.Errorf("batch %d (cut), PING after it: %w", bi, err)
			}
		}
		w.marks = append(w.marks, r.count)
	}
	w.frames = r.frames
	return w, nil
}

// dfUnsubscribed waits until nobody is subscribed to the channels of a
// client's key generation: its next connection then counts its own
// subscribers only.
func dfUnsubscribed(ctx context.Context, direct *redis.Client, client, gen int) error {
	chans := []string{genPrefix(client, gen) + "ch1", genPrefix(client, gen) + "ch2"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		subs, err := direct.PubSubNumSub(ctx, chans...).Result()
		if err != nil {
			return err
		}
		if subs[chans[0]]+subs[chans[1]] == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%v still have subscribers 5s after the connection closed", subs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dfClient runs one script through the proxy.
type dfClient struct {
	sc     dfScript
	want   dfWant // empty for the pinning mix: no comparison with Redis
	dial   func() (net.Conn, error)
	direct *redis.Client
	got    [][][]byte // per session, the frames received
	fail   *dfFailure
	wait   time.Duration // for a reply that is owed; 0 means dfReplyWait
}

// dfFailure is where and how a client's run went wrong.
type dfFailure struct {
	session, batch int
	frame          int // the first frame that differs, or the frames received
	err            error
}

func (c *dfClient) run() {
	for si, sess := range c.sc.sessions {
		bi, err := c.session(si, sess)
		if err == nil {
			err = dfUnsubscribed(context.Background(), c.direct, c.sc.client, sess.gen)
		}
		if err != nil {
			c.fail = &dfFailure{session: si, batch: bi, frame: len(c.got[si]), err: err}
			var m dfMismatch
			if errors.As(err, &m) {
				c.fail.frame = m.frame
			}
			return
		}
	}
}

// session runs one connection; on failure it returns the batch at fault.
func (c *dfClient) session(si int, sess dfSession) (int, error) {
	nc, err := c.dial()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	r := newDFReader(nc)
	c.got = append(c.got, nil)
	defer func() { c.got[si] = r.frames }()
	m := newDFConn()
	var owed dfCount
	closes := false
	for bi, b := range sess.batches {
		if err := dfWrite(nc, b); err != nil {
			return bi, fmt.Errorf("write: %w", err)
		}
		if b.cut >= 0 {
			r.until(dfCount{replies: 1 << 30}, b.linger) // whatever arrives before the client leaves
			if b.rst {
				dfAbort(nc)
			}
			return bi, c.compare(si, r)
		}
		for _, s := range b.steps {
			n, cl := m.apply(s)
			owed.replies += n
			closes = closes || cl
		}
		if c.want.sessions != nil {
			owed = c.want.sessions[si].marks[bi]
		}
		err := r.until(owed, cmp.Or(c.wait, dfReplyWait))
		if cerr := c.compare(si, r); cerr != nil {
			return bi, cerr
		}
		if err != nil {
			return bi, fmt.Errorf("waiting for %d replies and %d pushes, got %d and %d: %w",
				owed.replies, owed.pushes, r.count.replies, r.count.pushes, err)
		}
	}
	if !closes {
		return len(sess.batches) - 1, nil
	}
	err = r.toClose(5 * time.Second)
	if cerr := c.compare(si, r); cerr != nil {
		return len(sess.batches) - 1, cerr
	}
	if err != nil {
		return len(sess.batches) - 1, fmt.Errorf("Redis closes the connection after QUIT or a protocol error; through the proxy: %w", err)
	}
	return len(sess.batches) - 1, nil
}

// dfAbort makes closing nc send a TCP reset.
func dfAbort(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
}

// dfMismatch is a frame that is not what Redis sent.
type dfMismatch struct {
	frame int
	what  string
}

func (m dfMismatch) Error() string { return fmt.Sprintf("frame %d: %s", m.frame, m.what) }

// compare checks the frames received in session si: none from another
// namespace, and each equal to Redis's (in the pinning mix, no comparison).
func (c *dfClient) compare(si int, r *dfReader) error {
	for i, f := range r.frames {
		if ns := foreign(f, c.sc.client); ns != "" {
			return dfMismatch{i, fmt.Sprintf("holds another client's data (%s): %s", ns, quoteFrame(f))}
		}
		if c.want.sessions == nil {
			continue
		}
		want := c.want.sessions[si].frames
		if i >= len(want) {
			return dfMismatch{i, fmt.Sprintf("Redis sent only %d frames; got %s", len(want), quoteFrame(f))}
		}
		if dfNormal(f) != dfNormal(want[i]) {
			return dfMismatch{i, fmt.Sprintf("want %s, got %s", quoteFrame(want[i]), quoteFrame(f))}
		}
	}
	return nil
}

func quoteFrame(f []byte) string {
	if len(f) > 300 {
		return fmt.Sprintf("%q…(%d bytes)", f[:300], len(f))
	}
	return fmt.Sprintf("%q", f)
}

// checkState compares the client's keys in Redis after the proxy run with
// the keys after the direct run. Where the client cut a connection, the
// commands it had written whole may or may not have run, but at least those
// whose replies it received did, in order.
func (c *dfClient) checkState(t *testing.T, direct *redis.Client, want dfWant) {
	t.Helper()
	last := map[int]int{} // generation → its last session
	for si, sess := range c.sc.sessions {
		last[sess.gen] = si
	}
	for gen, si := range last {
		got, err := dfSnapshot(context.Background(), direct, genPrefix(c.sc.client, gen))
		if err != nil {
			t.Fatal(err)
		}
		cands := []map[string]string{want.final[gen]}
		what := "the direct run's"
		if sess := c.sc.sessions[si]; sess.cut() {
			sw := want.sessions[si]
			replies, confirmed := 0, 0
			for _, f := range c.got[si] {
				if f[0] != '>' {
					replies++
				}
			}
			for k, n := range sw.stepReplies {
				if n <= replies {
					confirmed = k + 1
				}
			}
			cands = sw.states[confirmed:]
			b := sess.batches[len(sess.batches)-1]
			what = fmt.Sprintf("any of the direct run's after %d to %d of the steps %v (the client wrote %d of their %d bytes, "+
				"received %d replies on that connection, and closed it)", confirmed, b.sent(), b.steps, b.cut, len(b.bytes()), replies)
		}
		if slices.ContainsFunc(cands, func(st map[string]string) bool { return maps.Equal(st, got) }) {
			continue
		}
		closest := slices.MinFunc(cands, func(a, b map[string]string) int {
			return cmp.Compare(len(diffState(a, got)), len(diffState(b, got)))
		})
		t.Errorf("client %d: keys %s* through the proxy are not %s, connection %d; closest:\n%s",
			c.sc.client, genPrefix(c.sc.client, gen), what, si+1, diffState(closest, got))
	}
}

func diffState(want, got map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			fmt.Fprintf(&b, "  %s: want %.200s, got %.200s\n", k, want[k], got[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "  %s: want none, got %.200s\n", k, got[k])
		}
	}
	return b.String()
}

// checkPinning checks the pinning mix, where the proxy may refuse a
// dedicated connection (-ERR upstream unavailable): a transaction whose
// MULTI was refused has every command up to its EXEC/DISCARD refused and
// none of its writes in Redis; one whose EXEC ran has them all.
func (c *dfClient) checkPinning(t *testing.T, direct *redis.Client) {
	t.Helper()
	ctx := context.Background()
	for si, sess := range c.sc.sessions {
		var steps []dfStep
		for _, b := range sess.batches {
			steps = append(steps, b.steps...)
		}
		frames := c.got[si]
		for i := 0; i < len(steps); i++ {
			if steps[i].tx == 0 || i > 0 && steps[i-1].tx == steps[i].tx {
				continue
			}
			j := i
			for j < len(steps) && steps[j].tx == steps[i].tx {
				j++
			}
			if j-i < 2 {
				continue // the script ended right after MULTI
			}
			set := steps[i+1].args // MULTI, SET key value, ...
			v, err := direct.Get(ctx, set[1]).Result()
			if err != nil && err != redis.Nil {
				t.Fatal(err)
			}
			refused := strings.HasPrefix(string(frames[i]), "-ERR upstream unavailable")
			ran := strings.EqualFold(steps[j-1].args[0], "EXEC") && frames[j-1][0] == '*'
			leaked := false
			for k := i; k < j && refused; k++ {
				leaked = leaked || frames[k][0] != '-'
			}
			if leaked || refused && err != redis.Nil || ran && v != set[2] {
				var b strings.Builder
				for k := i; k < j; k++ {
					fmt.Fprintf(&b, "  %s -> %q\n", steps[k], frames[k])
				}
				t.Errorf("client %d, connection %d: a transaction whose MULTI was refused must have every command refused and no effect; "+
					"one whose EXEC ran must have its effect; %s holds %q after:\n%s(batches as written: %s)",
					c.sc.client, si+1, set[1], v, b.String(), dfWrites(sess, i, j))
				return
			}
		}
	}
}

// dfWrites lists the writes of the batches that hold steps [from, to) of a
// session, as Go strings, batches separated by "|".
func dfWrites(sess dfSession, from, to int) string {
	var b strings.Builder
	first := 0
	for _, bt := range sess.batches {
		if first < to && first+len(bt.steps) > from {
			data, off := bt.bytes(), 0
			for _, n := range bt.chunks {
				fmt.Fprintf(&b, "%q ", data[off:off+n])
				off += n
			}
			b.WriteString("| ")
		}
		first += len(bt.steps)
	}
	return b.String()
}

// report describes a failed client: where, what it wrote on that
// connection and what came back, next to Redis's answer.
func (c *dfClient) report(v dfVariant) string {
	f := c.fail
	var b strings.Builder
	fmt.Fprintf(&b, "variant %s, seed %d, client %d, connection %d of %d, batch %d: %v\n",
		v.name, v.seed, c.sc.client, f.session+1, len(c.sc.sessions), f.batch, f.err)
	fmt.Fprintf(&b, "reproduce: DIFFFUZZ_SEED=%d go test -race -count=1 -run 'TestDiffFuzzShort/^%s$' ./proxy/\n", v.seed, v.name)
	b.WriteString("(earlier connections of this client may have set keys)\n")
	var want [][]byte
	if c.want.sessions != nil {
		want = c.want.sessions[f.session].frames
	}
	describe(&b, c.sc.sessions[f.session], max(0, f.batch-7), f.batch, f.frame, c.got[f.session], want)
	return b.String()
}

// describe writes a session's batches from first to upto, piece by piece,
// and the frames around frame: received, and what Redis sent.
func describe(b *strings.Builder, sess dfSession, first, upto, frame int, got, want [][]byte) {
	b.WriteString("written on a new connection, one Go string per write")
	if first > 0 {
		fmt.Fprintf(b, " (%d earlier batches not shown)", first)
	}
	b.WriteString(":\n")
	for bi := first; bi <= upto; bi++ {
		bt := sess.batches[bi]
		fmt.Fprintf(b, "  batch %d %v:", bi, bt.steps)
		data, off := bt.bytes(), 0
		for i, n := range bt.chunks {
			if bt.pauses[i] > 0 {
				fmt.Fprintf(b, " (pause %s)", bt.pauses[i])
			}
			fmt.Fprintf(b, " %q", data[off:off+n])
			off += n
		}
		if bt.cut >= 0 {
			fmt.Fprintf(b, " (then reads for %s and closes%s)", bt.linger, map[bool]string{true: " with a TCP reset"}[bt.rst])
		}
		b.WriteString("\n")
	}
	from := max(0, frame-6)
	for _, side := range []struct {
		name   string
		frames [][]byte
	}{{"received through the proxy", got}, {"Redis sent on a direct connection", want}} {
		if side.frames == nil {
			continue
		}
		fmt.Fprintf(b, "frames %s (%d in all):\n", side.name, len(side.frames))
		for i := from; i < min(len(side.frames), frame+4); i++ {
			fmt.Fprintf(b, "  %d: %s\n", i, quoteFrame(side.frames[i]))
		}
	}
}

// dfMinimiseAll runs each failed client alone against a new proxy and
// shrinks its script while it still fails: a minimal reproduction.
func dfMinimiseAll(t *testing.T, rs *testredis.Server, v dfVariant, failed []*dfClient) {
	e := startProxy(t, newPKI(t), "redis://"+rs.Addr, v.edit)
	tlsConf := e.pki.clientTLS()
	dial := func() (net.Conn, error) { return tls.Dial("tcp", e.addr, tlsConf) }
	direct := redis.NewClient(&redis.Options{Addr: rs.Addr, Protocol: 2, PoolSize: 2})
	defer direct.Close()
	for _, c := range failed {
		t.Errorf("client %d, minimal reproduction (keys empty at the start):\n%s", c.sc.client, dfMinimise(rs.Addr, dial, direct, c))
	}
}

// dfMinimise starts from the failing connection alone, or with the client's
// earlier connections if it needs them, and drops connections, batches,
// single steps, then the splitting of writes, as long as it still fails.
func dfMinimise(addr string, dial func() (net.Conn, error), direct *redis.Client, c *dfClient) string {
	ctx := context.Background()
	client := c.sc.client
	fails := func(sessions []dfSession) *dfClient {
		direct.FlushAll(ctx)
		sc := dfScript{client: client, sessions: sessions}
		want, err := dfReplay(addr, direct, sc, 2*time.Second)
		if err != nil {
			return nil // not a sequence the model follows
		}
		direct.FlushAll(ctx)
		tc := &dfClient{sc: sc, want: want, dial: dial, direct: direct, wait: 2 * time.Second}
		if tc.run(); tc.fail == nil {
			return nil
		}
		return tc
	}
	last := c.sc.sessions[c.fail.session]
	last.batches = slices.Clone(last.batches[:c.fail.batch+1])
	var best *dfClient
	for _, script := range [][]dfSession{{last}, append(slices.Clone(c.sc.sessions[:c.fail.session]), last)} {
		for try := 0; best == nil && try < 3; try++ { // it may depend on timing
			best = fails(script)
		}
	}
	if best == nil {
		return "none: the client's connections pass on their own (it depends on other clients or on timing)"
	}
	deadline := time.Now().Add(dfMinimiseTime)
	try := func(cand []dfSession) {
		if time.Now().Before(deadline) {
			if tc := fails(cand); tc != nil {
				best = tc
			}
		}
	}
	// Backwards, so that a removal shifts nothing still to try (a batch or
	// a connection goes only with its last step, k == 0).
	for si := len(best.sc.sessions) - 2; si >= 0; si-- {
		try(slices.Delete(slices.Clone(best.sc.sessions), si, si+1))
	}
	for si := len(best.sc.sessions) - 1; si >= 0; si-- {
		for bi := len(best.sc.sessions[si].batches) - 1; bi >= 0; bi-- {
			for k := len(best.sc.sessions[si].batches[bi].steps) - 1; k >= 0; k-- {
				try(withoutStep(best.sc.sessions, si, bi, k))
			}
		}
	}
	for si, sess := range best.sc.sessions {
		for bi, b := range sess.batches {
			cand := slices.Clone(best.sc.sessions)
			cand[si].batches = slices.Clone(sess.batches)
			cand[si].batches[bi].chunks, cand[si].batches[bi].pauses = []int{len(b.bytes())}, []time.Duration{0}
			if b.cut < 0 {
				try(cand)
			}
		}
	}
	f := best.fail
	var b strings.Builder
	fmt.Fprintf(&b, "connection %d of %d, batch %d: %v\n", f.session+1, len(best.sc.sessions), f.batch, f.err)
	for si := range f.session {
		fmt.Fprintf(&b, "connection %d:\n", si+1)
		describe(&b, best.sc.sessions[si], 0, len(best.sc.sessions[si].batches)-1, 0, nil, nil)
	}
	fmt.Fprintf(&b, "connection %d:\n", f.session+1)
	describe(&b, best.sc.sessions[f.session], 0, f.batch, f.frame, best.got[f.session], best.want.sessions[f.session].frames)
	return b.String()
}

// withoutStep is sessions without step k of batch bi of session si (and
// without the batch, or the session, it leaves empty); the writes keep
// their other boundaries.
func withoutStep(sessions []dfSession, si, bi, k int) []dfSession {
	out := slices.Clone(sessions)
	out[si].batches = slices.Clone(out[si].batches)
	b := out[si].batches[bi]
	start := 0
	for _, s := range b.steps[:k] {
		start += len(s.raw)
	}
	end := start + len(b.steps[k].raw)
	b.steps = slices.Delete(slices.Clone(b.steps), k, k+1)
	var chunks []int
	var pauses []time.Duration
	off := 0
	for i, n := range b.chunks {
		keep := n - max(0, min(off+n, end)-max(off, start))
		if keep > 0 {
			chunks, pauses = append(chunks, keep), append(pauses, b.pauses[i])
		}
		off += n
	}
	b.chunks, b.pauses = chunks, pauses
	if b.cut >= 0 {
		b.cut -= min(max(b.cut-start, 0), end-start)
	}
	out[si].batches[bi] = b
	if len(b.steps) == 0 {
		out[si].batches = slices.Delete(out[si].batches, bi, bi+1)
	}
	if len(out[si].batches) == 0 {
		out = slices.Delete(out, si, si+1)
	}
	return out
}
