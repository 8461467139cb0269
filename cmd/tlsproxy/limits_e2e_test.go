//go:build linux

package main

// The binary's limits and certificate expiry monitoring, with real files,
// a real Redis and real clients (the in-process tests in proxy/ cover the
// details).

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// withConfig appends YAML to o's config.
func (o *opsEnv) withConfig(t *testing.T, yaml string) {
	t.Helper()
	b, err := os.ReadFile(o.cfg)
	opsNoErr(t, err)
	opsNoErr(t, os.WriteFile(o.cfg, append(b, yaml...), 0o600))
}

// readLine reads one reply line from c within a few seconds; "" and the
// error when the connection ends first.
func readLine(c *tls.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

// TestBinaryLimits: limits.max_clients refuses the client over the limit
// with Redis's error; limits.idle_timeout closes idle clients and spares a
// subscriber; both are counted in /metrics.
func TestBinaryLimits(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	o.withConfig(t, "limits:\n  max_clients: 2\n  idle_timeout: 700ms\n")
	p := o.start(t) // its readiness check comes and goes
	a, sub := o.dialTLS(t, o.addr), o.dialTLS(t, o.addr)
	defer a.Close()
	defer sub.Close()
	if r := e2ePing(t, a); r != "+PONG" {
		t.Fatalf("PING: %q", r)
	}
	sub.Write([]byte("*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n"))
	over := o.dialTLS(t, o.addr)
	defer over.Close()
	if line, err := readLine(over); line != "-ERR max number of clients reached\r\n" {
		t.Fatalf("third client: %q, %v", line, err)
	}
	time.Sleep(1500 * time.Millisecond)
	if line, err := readLine(a); err == nil {
		t.Fatalf("idle client still open after limits.idle_timeout: read %q", line)
	}
	// The subscriber is exempt: a message published now still reaches it.
	opsNoErr(t, o.redis.client.Publish(context.Background(), "ch", "still-here").Err())
	sub.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	for buf := make([]byte, 256); !strings.Contains(string(got), "still-here"); {
		n, err := sub.Read(buf)
		if err != nil {
			t.Fatalf("the subscriber after limits.idle_timeout: %v (read %q)", err, got)
		}
		got = append(got, buf[:n]...)
	}
	fams := o.scrape(t)
	for reason, want := range map[string]float64{"max_clients": 1, "idle_timeout": 1} {
		if v, _ := metricValue(fams, "tlsproxy_client_disconnects_total", "reason="+reason); v < want {
			t.Errorf("tlsproxy_client_disconnects_total{reason=%q} = %v, want >= %v", reason, v, want)
		}
	}
	p.stop(t)
}

// TestBinaryOutputBufferLimit: a client that asks for many large replies
// and reads none is disconnected by limits.client_output_buffer, and a
// client beside it is not held up.
func TestBinaryOutputBufferLimit(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	o.withConfig(t, "limits:\n  client_output_buffer: 2097152\n")
	p := o.start(t)
	opsNoErr(t, o.redis.client.Set(context.Background(), "big", strings.Repeat("x", 1<<20), 0).Err())
	stuck := o.dialTLS(t, o.addr)
	defer stuck.Close()
	stuck.Write([]byte(strings.Repeat("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n", 64)))
	other := o.dialTLS(t, o.addr)
	defer other.Close()
	for range 20 {
		if r := e2ePing(t, other); r != "+PONG" {
			t.Fatalf("PING beside the stuck client: %q", r)
		}
	}
	p.waitLog(t, func(l e2eLogLine) bool { return strings.Contains(l.Message, "client output buffer limit reached") })
	if v, _ := metricValue(o.scrape(t), "tlsproxy_client_disconnects_total", "reason=output_buffer"); v != 1 {
		t.Errorf("output_buffer disconnects = %v, want 1", v)
	}
	p.stop(t)
}

// TestBinaryCertificateExpiry: a server certificate inside
// tls.expiry_warning is logged at start and counted; after it is replaced
// and reloaded, it no longer is.
func TestBinaryCertificateExpiry(t *testing.T) {
	t.Parallel()
	o := newOps(t, 5*time.Second)
	ca := rlCA(t, o)
	soon, err := ca.Issue(tlsconf.LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, NotAfter: time.Now().Add(30 * 24 * time.Hour)})
	opsNoErr(t, err)
	rlWrite(t, o.cert("server.crt"), soon.CertPEM)
	rlWrite(t, o.cert("server.key"), soon.KeyPEM)
	p := o.start(t)
	l := p.waitLog(t, func(l e2eLogLine) bool {
		return strings.Contains(l.Message, "certificate inside tls.expiry_warning") && l.Raw["role"] == "server"
	})
	if d, _ := l.Raw["days_left"].(float64); l.Level != "warn" || d < 29 || d > 30 || l.Raw["file"] != o.cert("server.crt") {
		t.Errorf("expiry warning: %s", l.Line)
	}
	if v, _ := metricValue(o.scrape(t), "tlsproxy_certificate_expiring"); v != 1 {
		t.Errorf("tlsproxy_certificate_expiring = %v, want 1", v)
	}
	fresh, serial := rlIssue(t, ca) // a year
	rlWrite(t, o.cert("server.crt"), fresh.CertPEM)
	rlWrite(t, o.cert("server.key"), fresh.KeyPEM)
	rlWaitServed(t, o, p, serial, 5*time.Second)
	if v, _ := metricValue(o.scrape(t), "tlsproxy_certificate_expiring"); v != 0 {
		t.Errorf("tlsproxy_certificate_expiring after the rotation = %v, want 0", v)
	}
	p.stop(t)
}
