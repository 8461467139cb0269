package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// writeCerts creates a CA, a server certificate for 127.0.0.1 and a client
// certificate in dir, and returns the server's tls.Config (client
// certificates required).
func writeCerts(t *testing.T, dir string) *tls.Config {
	t.Helper()
	ca, err := tlsconf.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(o tlsconf.LeafOptions) tlsconf.Leaf {
		o.CommonName = "leaf"
		o.IPs = []net.IP{net.ParseIP("127.0.0.1")}
		l, err := ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	client := issue(tlsconf.LeafOptions{Client: true})
	for name, data := range map[string][]byte{"ca.crt": ca.CertPEM, "client.crt": client.CertPEM, "client.key": client.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := issue(tlsconf.LeafOptions{Server: true}).TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
}

// servePing answers every PING with +PONG over mTLS.
func servePing(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				buf := make([]byte, len(pingCmd))
				for {
					if _, err := io.ReadFull(r, buf); err != nil || !bytes.Equal(buf, pingCmd) {
						return
					}
					if _, err := c.Write(pongReply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestRunBothPhases(t *testing.T) {
	dir := t.TempDir()
	addr := servePing(t, writeCerts(t, dir))
	o := options{
		addr: addr, ca: filepath.Join(dir, "ca.crt"), cert: filepath.Join(dir, "client.crt"), key: filepath.Join(dir, "client.key"),
		label: "test", conns: 20, pid: os.Getpid(), workers: 2, dialConcurrency: 4,
		hsDuration: 300 * time.Millisecond, settle: time.Millisecond, timeout: 5 * time.Second,
	}
	var out bytes.Buffer
	if err := run(o, &out); err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if res.ConnsOpen != 20 || res.ConnErrors != 0 {
		t.Errorf("idle phase: %d open, %d errors (%s)", res.ConnsOpen, res.ConnErrors, res.ConnFirstError)
	}
	if res.RSSBeforeKiB <= 0 || res.RSSAfterKiB <= 0 {
		t.Errorf("RSS of our own process not read: %d / %d", res.RSSBeforeKiB, res.RSSAfterKiB)
	}
	if res.Handshakes == 0 || res.HandshakeErrors != 0 || res.HandshakesPerSec <= 0 {
		t.Errorf("handshake phase: %d ok, %d errors (%s)", res.Handshakes, res.HandshakeErrors, res.HandshakeFirstError)
	}
	if res.TLSVersion != "TLS 1.3" || res.Label != "test" {
		t.Errorf("tls %q label %q", res.TLSVersion, res.Label)
	}
}

func TestRunFailsWithoutTrustedServer(t *testing.T) {
	dir := t.TempDir()
	srvCfg := writeCerts(t, dir)
	addr := servePing(t, srvCfg)
	// A CA file that did not sign the server certificate.
	other := t.TempDir()
	writeCerts(t, other)
	o := options{addr: addr, ca: filepath.Join(other, "ca.crt"), cert: filepath.Join(dir, "client.crt"), key: filepath.Join(dir, "client.key"),
		workers: 1, dialConcurrency: 1, timeout: 2 * time.Second}
	if err := run(o, io.Discard); err == nil {
		t.Error("expected the probe connection to fail certificate verification")
	}
}

func TestQuantileAndProcReaders(t *testing.T) {
	d := []time.Duration{1 * time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 4 * time.Millisecond}
	if got := quantileMs(d, 0.5); got != 2 {
		t.Errorf("p50 = %v, want 2", got)
	}
	if got := quantileMs(d, 0.99); got != 4 {
		t.Errorf("p99 = %v, want 4", got)
	}
	if got := quantileMs(nil, 0.5); got != 0 {
		t.Errorf("empty p50 = %v", got)
	}
	if readCPUTicks(os.Getpid()) < 0 || readStatusKiB(os.Getpid(), "VmRSS") <= 0 {
		t.Error("cannot read /proc for our own process")
	}
	if readCPUTicks(0) != -1 || readStatusKiB(0, "VmRSS") != 0 {
		t.Error("pid 0 should read as unknown")
	}
}
