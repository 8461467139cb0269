package proxy

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// Replication through the proxy: `redis-cli --rdb`, `redis-cli --replica`
// and a real replica whose link to its master goes through the proxy with
// mutual TLS. Every test runs three variants with the same steps:
//
//   - "direct": the tools talk plain TCP to redis-server itself;
//   - "direct-tls": they talk to Redis's own TLS port (tls-auth-clients yes)
//     with the same kind of certificates as through the proxy, which proves
//     the TLS flags of redis-cli and of the replica;
//   - "proxy": they talk to the proxy, in front of a plain Redis.

// replWait bounds each wait for a replication event and each short tool run.
const replWait = 15 * time.Second

var replVariants = []string{"direct", "direct-tls", "proxy"}

// replTarget is the master as one variant's replication clients see it.
type replTarget struct {
	host, port string
	// tls holds redis-cli's TLS flags; nil for plain TCP.
	tls []string
	// certFile, keyFile and caFile are a client certificate (for a replica)
	// and the CA that signed the server's; empty for plain TCP.
	certFile, keyFile, caFile string
	master                    *redis.Client // plain TCP straight to the master
	proxy                     *proxyEnv     // nil unless the variant is "proxy"
}

func replSetup(t *testing.T, variant string) *replTarget {
	t.Helper()
	var (
		tg   replTarget
		p    *pki
		addr string
	)
	switch variant {
	case "direct":
		rs := testredis.Start(t, testredis.Options{})
		addr, tg.master = rs.Addr, replClient(t, rs.Addr)
	case "direct-tls":
		p = newPKI(t)
		rs := testredis.Start(t, testredis.Options{KeepPlain: true, TLS: &testredis.TLS{
			CertFile: p.certFile, KeyFile: p.keyFile, CAFile: p.caFile, AuthClients: true,
		}})
		addr, tg.master = rs.Addr, replClient(t, rs.PlainAddr)
	case "proxy":
		e := startPlain(t, nil)
		p, addr, tg.proxy, tg.master = e.pki, e.addr, e, e.direct(t)
	default:
		t.Fatalf("unknown variant %q", variant)
	}
	// Diskless full syncs (Redis 7's default) wait 5 s for more replicas to
	// share the transfer; these tests have one.
	if err := tg.master.ConfigSet(context.Background(), "repl-diskless-sync-delay", "0").Err(); err != nil {
		t.Fatal(err)
	}
	tg.host, tg.port, _ = net.SplitHostPort(addr)
	if p != nil {
		tg.certFile, tg.keyFile = replClientCert(t, p, "replication-"+variant)
		tg.caFile = p.caFile
		tg.tls = []string{"--tls", "--cert", tg.certFile, "--key", tg.keyFile, "--cacert", tg.caFile}
	}
	return &tg
}

// cliArgs are redis-cli's connection flags for the target, then extra.
func (tg *replTarget) cliArgs(extra ...string) []string {
	a := append([]string{"-h", tg.host, "-p", tg.port}, tg.tls...)
	return append(a, extra...)
}

// proxyLog is the end of the proxy's log for failure messages, or "".
func (tg *replTarget) proxyLog() string {
	if tg.proxy == nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(tg.proxy.logs.String()), "\n")
	return "\n--- end of the proxy log ---\n" + strings.Join(lines[max(0, len(lines)-30):], "\n")
}

func replClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, ReadTimeout: 10 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// replClientCert issues a client certificate named cn and writes it and its
// key to files, for tools that read PEM files.
func replClientCert(t testing.TB, p *pki, cn string) (certFile, keyFile string) {
	t.Helper()
	leaf, err := p.ca.Issue(tlsconf.LeafOptions{CommonName: cn, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	writeFile(t, certFile, leaf.CertPEM)
	writeFile(t, keyFile, leaf.KeyPEM)
	return certFile, keyFile
}

func replNeed(t *testing.T, bins ...string) {
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not on PATH: %v", b, err)
		}
	}
}

// replTool is a command running in the background, killed at the latest
// when the test ends.
type replTool struct {
	cmd         *exec.Cmd
	stdout, err syncbuf.Buffer
	done        chan struct{}
	waitErr     error
}

func replStart(t *testing.T, timeout time.Duration, name string, args ...string) *replTool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	r := &replTool{cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.err
	r.cmd.WaitDelay = 2 * time.Second
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { r.waitErr = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// replRun runs a command to completion and fails the test unless it exits 0.
func replRun(t *testing.T, name string, args ...string) *replTool {
	t.Helper()
	r := replStart(t, replWait, name, args...)
	if err := r.wait(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, r.output())
	}
	return r
}

func (r *replTool) wait() error { <-r.done; return r.waitErr }

func (r *replTool) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *replTool) output() string {
	return fmt.Sprintf("--- stdout ---\n%s\n--- stderr ---\n%s", r.stdout.String(), r.err.String())
}

// replEventually polls cond every 20ms for up to replWait; on timeout it
// fails with what and diag's diagnostics.
func replEventually(t *testing.T, what string, cond func() bool, diag func() string) {
	t.Helper()
	for deadline := time.Now().Add(replWait); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s\n%s", replWait, what, diag())
		}
	}
}

// replInfo returns one field of INFO replication, or "" if it is absent.
func replInfo(c *redis.Client, field string) string {
	info, _ := c.Info(context.Background(), "replication").Result()
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	return ""
}

// replFill writes n string keys prefix:N = "value-N" in one pipeline.
func replFill(t *testing.T, c *redis.Client, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	pipe := c.Pipeline()
	for i := range n {
		pipe.Set(ctx, fmt.Sprintf("%s:%d", prefix, i), fmt.Sprintf("value-%d", i), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("fill %s: %v", prefix, err)
	}
}

func TestReplicationRDBBackup(t *testing.T) {
	replNeed(t, "redis-cli", "redis-check-rdb")
	for _, variant := range replVariants {
		t.Run(variant, func(t *testing.T) {
			tg := replSetup(t, variant)
			ctx := context.Background()
			// 997 strings, a hash, a list and a stream: 1000 keys.
			replFill(t, tg.master, "rdb:str", 997)
			tg.master.HSet(ctx, "rdb:hash", "f1", "v1", "f2", "v2", "f3", "v3")
			tg.master.RPush(ctx, "rdb:list", "a", "b", "c", "d")
			for i := range 5 {
				tg.master.XAdd(ctx, &redis.XAddArgs{Stream: "rdb:stream", Values: []any{"n", i}})
			}
			if n := tg.master.DBSize(ctx).Val(); n != 1000 {
				t.Fatalf("DBSIZE on the master = %d, want 1000", n)
			}

			dir := t.TempDir()
			out := filepath.Join(dir, "backup.rdb")
			replRun(t, "redis-cli", tg.cliArgs("--rdb", out)...)
			replRun(t, "redis-check-rdb", out)

			// A fresh redis-server loads the dump at start-up (testredis's
			// Args come last, so they override its own --dir).
			rs := testredis.Start(t, testredis.Options{Args: []string{"--dir", dir, "--dbfilename", "backup.rdb"}})
			c := replClient(t, rs.Addr)
			if n := c.DBSize(ctx).Val(); n != 1000 {
				t.Fatalf("DBSIZE of the restored dump = %d, want 1000", n)
			}
			if v := c.Get(ctx, "rdb:str:500").Val(); v != "value-500" {
				t.Errorf("GET rdb:str:500 = %q, want value-500", v)
			}
			if v := c.HGet(ctx, "rdb:hash", "f2").Val(); v != "v2" {
				t.Errorf("HGET rdb:hash f2 = %q, want v2", v)
			}
			if v := c.LRange(ctx, "rdb:list", 0, -1).Val(); strings.Join(v, ",") != "a,b,c,d" {
				t.Errorf("LRANGE rdb:list = %q, want a b c d", v)
			}
			if n := c.XLen(ctx, "rdb:stream").Val(); n != 5 {
				t.Errorf("XLEN rdb:stream = %d, want 5", n)
			}
		})
	}
}

func TestReplicationReplicaThroughProxy(t *testing.T) {
	for _, variant := range replVariants {
		t.Run(variant, func(t *testing.T) {
			tg := replSetup(t, variant)
			ctx := context.Background()
			replFill(t, tg.master, "before", 100)

			args := []string{"--replicaof", tg.host, tg.port}
			if tg.tls != nil {
				// The replica has no TLS listener (tls-port stays 0); Redis
				// still insists on tls-cert-file, which is also the
				// certificate it presents as a client on the master link.
				args = append(args, "--tls-replication", "yes",
					"--tls-cert-file", tg.certFile, "--tls-key-file", tg.keyFile,
					"--tls-ca-cert-file", tg.caFile)
			}
			replica := testredis.Start(t, testredis.Options{Args: args})
			rc := replClient(t, replica.Addr)
			diag := func() string {
				return "--- replica log ---\n" + replica.LogTail() + tg.proxyLog()
			}

			replEventually(t, "master_link_status:up on the replica", func() bool {
				return replInfo(rc, "master_link_status") == "up"
			}, diag)
			if v := rc.Get(ctx, "before:42").Val(); v != "value-42" {
				t.Errorf("after the initial sync, GET before:42 on the replica = %q, want value-42", v)
			}
			if n := rc.DBSize(ctx).Val(); n != 100 {
				t.Errorf("after the initial sync, DBSIZE on the replica = %d, want 100", n)
			}
			if v := replInfo(tg.master, "connected_slaves"); v != "1" {
				t.Errorf("master INFO replication connected_slaves = %q, want 1", v)
			}

			// The command stream after the sync.
			replFill(t, tg.master, "after", 50)
			tg.master.HSet(ctx, "after:hash", "k", "v")
			replEventually(t, "keys written after the sync to reach the replica", func() bool {
				return rc.Get(ctx, "after:49").Val() == "value-49" && rc.HGet(ctx, "after:hash", "k").Val() == "v"
			}, diag)

			if tg.proxy == nil {
				return
			}
			started, raw := safetyLogLines(t, tg.proxy, "replication stream started")
			if len(started) != 1 {
				t.Fatalf("want one \"replication stream started\" log line, got %d:\n%s", len(started), strings.Join(raw, "\n"))
			}
			if c, _ := started[0]["command"].(string); !strings.EqualFold(c, "psync") {
				t.Errorf("\"replication stream started\" has command %q, want PSYNC: %s", c, raw[0])
			}
			if n := metric(t, tg.proxy, "tlsproxy_replication_streams_total", ""); n != 1 {
				t.Errorf("tlsproxy_replication_streams_total = %v, want 1", n)
			}
			if n := metric(t, tg.proxy, "tlsproxy_pinned_sessions", `reason="replication"`); n != 1 {
				t.Errorf("pinned sessions (replication) = %v, want 1", n)
			}
			replica.Stop()
			replEventually(t, "\"replication stream ended\" in the proxy log after the replica stopped", func() bool {
				ended, _ := safetyLogLines(t, tg.proxy, "replication stream ended")
				return len(ended) == 1
			}, diag)
		})
	}
}

func TestReplicationRedisCliReplica(t *testing.T) {
	replNeed(t, "redis-cli")
	for _, variant := range replVariants {
		t.Run(variant, func(t *testing.T) {
			tg := replSetup(t, variant)
			tool := replStart(t, time.Minute, "redis-cli", tg.cliArgs("--replica")...)
			diag := func() string {
				return tool.output() + tg.proxyLog()
			}
			replEventually(t, "redis-cli --replica to finish the sync", func() bool {
				if tool.exited() {
					t.Fatalf("redis-cli --replica exited: %v\n%s", tool.wait(), diag())
				}
				// "SYNC done after N bytes. Logging commands from master."
				return strings.Contains(tool.err.String(), "SYNC done")
			}, diag)

			marker := fmt.Sprintf("marker-%s-%d", variant, time.Now().UnixNano())
			if err := tg.master.Set(context.Background(), "repl-marker", marker, 0).Err(); err != nil {
				t.Fatal(err)
			}
			replEventually(t, "the SET of the marker in redis-cli --replica's output", func() bool {
				if tool.exited() {
					t.Fatalf("redis-cli --replica exited: %v\n%s", tool.wait(), diag())
				}
				return strings.Contains(tool.stdout.String(), marker)
			}, diag)
			tool.cmd.Process.Kill()
			tool.wait()
		})
	}
}

// TestReplicationRefusedStaysParsed: a SYNC or PSYNC that Redis refuses
// leaves the session parsing requests as before: what follows is still
// routed (a refused SCRIPT DEBUG SYNC stays refused), and never copied
// unparsed to Redis. Refusals read as they do directly.
func TestReplicationRefusedStaysParsed(t *testing.T) {
	e := startPlain(t, nil)
	ctx := context.Background()
	direct := e.direct(t)
	if err := direct.Do(ctx, "ACL", "SETUSER", "norepl", "on", ">pw", "~*", "+@all", "-sync", "-psync").Err(); err != nil {
		t.Fatal(err)
	}
	// Inside MULTI Redis refuses SYNC at once and aborts the transaction;
	// without the right to run it, it answers NOPERM.
	reqs := []string{
		cmd("MULTI") + cmd("SYNC") + cmd("SET", "repl:multi", "v") + cmd("EXEC"),
		cmd("AUTH", "norepl", "pw") + cmd("PSYNC", "?", "-1") + cmd("SYNC") + cmd("PING", "after"),
		cmd("PSYNC", "only-one-argument"),
	}
	d, p := safetyConverse(t, e, 9, reqs...)
	safetySame(t, "refused SYNC/PSYNC", d, p)

	c := safetyProxy(t, e)
	c.send(t, cmd("AUTH", "norepl", "pw")+cmd("SYNC")+cmd("SCRIPT", "DEBUG", "SYNC")+cmd("GET", "repl:multi"))
	got := c.frames(t, 4, safetyReplyWait)
	if !strings.HasPrefix(got[1], "-NOPERM") || got[2] != "-"+commands.RefusalReason([][]byte{[]byte("script"), []byte("debug"), []byte("sync")})+"\r\n" || got[3] != "$-1\r\n" {
		t.Fatalf("AUTH, refused SYNC, SCRIPT DEBUG SYNC, GET: %q; want NOPERM, the proxy's refusal, nil", got)
	}

	// After SUBSCRIBE, replies are no longer counted: the proxy refuses.
	sub := safetyProxy(t, e)
	sub.send(t, cmd("SUBSCRIBE", "repl:ch")+cmd("PSYNC", "?", "-1"))
	if got := sub.frames(t, 2, safetyReplyWait)[1]; got != "-"+errReplicateUncounted+"\r\n" {
		t.Fatalf("PSYNC after SUBSCRIBE: %q", got)
	}
	if contains(e.logs.String(), "replication stream started") {
		t.Fatal("a refused SYNC/PSYNC started a replication stream")
	}
}
