package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// burstReader repeats a burst of commands endlessly, like a client that
// always has its next pipeline ready; one Read returns at most the rest of
// the current burst.
type burstReader struct {
	burst []byte
	off   int
}

func (r *burstReader) Read(p []byte) (int, error) {
	n := copy(p, r.burst[r.off:])
	r.off = (r.off + n) % len(r.burst)
	return n, nil
}

// BenchmarkParseAndRoute is the proxy's own work per forwarded command,
// without I/O: the request reader parses a burst of 16 pipelined GETs, each
// is classified, counted and queued for a shared connection, and the reader
// is released.
func BenchmarkParseAndRoute(b *testing.B) {
	const perBurst = 16
	burst := []byte(strings.Repeat(cmd("GET", "key:000000001234"), perBurst))
	cr := resp.NewRequestReader(&burstReader{burst: burst}, 1<<20, maxBulkLen)
	var batch upstream.Batch
	st := newStats()
	total := 0
	b.ReportAllocs()
	for b.Loop() {
		// A read may end between commands of the burst (the parser's
		// buffer wraps); it returns whatever is complete.
		cmds, err := cr.Read()
		if err != nil || len(cmds) == 0 {
			b.Fatalf("read %d commands: %v", len(cmds), err)
		}
		total += len(cmds)
		for _, c := range cmds {
			// What dispatch does: route, count, queue with the command's tag.
			route, id := commands.Resolve(c.Args)
			if route != commands.Shared {
				b.Fatal("GET is not stateless")
			}
			st.commands[id].Add(1)
			batch.Cmds = append(batch.Cmds, c.Raw)
			batch.Tags = append(batch.Tags, uint16(id))
		}
		batch.Cmds, batch.Tags = batch.Cmds[:0], batch.Tags[:0]
		cr.Release()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/cmd")
	b.ReportMetric(float64(total)/float64(b.N), "cmds/op")
}

// BenchmarkForwardGET drives a real proxy in front of a real Redis with a
// raw TLS client sending 16 pipelined GETs per iteration, and reports the
// allocations of the whole process (proxy and client) per forwarded command.
func BenchmarkForwardGET(b *testing.B) {
	const perBurst = 16
	e := startPlain(b, nil)
	c, err := tls.Dial("tcp", e.addr, e.pki.clientTLS())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(cmd("SET", "k", "0123456789"))); err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	if _, err := br.ReadString('\n'); err != nil {
		b.Fatal(err)
	}
	burst := []byte(strings.Repeat(cmd("GET", "k"), perBurst))
	reply := "$10\r\n0123456789\r\n"
	want := len(reply) * perBurst
	buf := make([]byte, want)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(burst); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	if string(buf[:len(reply)]) != reply {
		b.Fatalf("reply %q", buf[:len(reply)])
	}
	cmds := float64(b.N * perBurst)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/cmds, "allocs/cmd")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/cmds, "ns/cmd")
}
