package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// issueFiles issues a leaf from p's CA expiring at notAfter and writes it
// to dir; it returns the certificate and key paths.
func issueFiles(t *testing.T, p *pki, dir, name string, o tlsconf.LeafOptions) (certFile, keyFile string) {
	t.Helper()
	leaf, err := p.ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeFile(t, certFile, leaf.CertPEM)
	writeFile(t, keyFile, leaf.KeyPEM)
	return certFile, keyFile
}

// TestExpiryOfConfiguredCertificates: a server certificate inside
// tls.expiry_warning is logged at start (WARN, with its file, role,
// subject, serial and days left); an expired CA in the client bundle is
// logged at ERROR; the metrics give every certificate's expiry and the
// count inside the window, and /status colours them.
func TestExpiryOfConfiguredCertificates(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	notAfter := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	certFile, keyFile := issueFiles(t, p, dir, "soon", tlsconf.LeafOptions{CommonName: "soon.example",
		IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true, NotAfter: notAfter})
	// The client bundle: the live CA plus one that expired yesterday.
	old, err := tlsconf.NewCA("retired CA")
	if err != nil {
		t.Fatal(err)
	}
	expired := selfSigned(t, old, time.Now().Add(-24*time.Hour))
	caPEM, err := os.ReadFile(p.caFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle.crt")
	writeFile(t, bundle, append(caPEM, expired...))
	rs := testredis.Start(t, testredis.Options{})
	e := startProxy(t, p, "redis://"+rs.Addr, func(c *config.Config) {
		c.Listen.TLS.CertFile, c.Listen.TLS.KeyFile, c.Listen.TLS.ClientCAFile = certFile, keyFile, bundle
	})
	e.redis = rs

	waitFor(t, "the expiry log lines", func() bool { return contains(e.logs.String(), "certificate expired") })
	warns, raw := safetyLogLines(t, e, "certificate inside tls.expiry_warning: rotate it")
	if len(warns) != 1 || warns[0]["role"] != "server" || warns[0]["file"] != certFile || warns[0]["subject"] != "CN=soon.example" ||
		warns[0]["level"] != "warn" || (warns[0]["days_left"] != 29.0 && warns[0]["days_left"] != 30.0) || warns[0]["serial"] == "" {
		t.Fatalf("WARN lines: %q", raw)
	}
	errs, raw := safetyLogLines(t, e, "certificate expired")
	if len(errs) != 1 || errs[0]["role"] != "client-ca" || errs[0]["subject"] != "CN=retired CA" || errs[0]["level"] != "error" {
		t.Fatalf("ERROR lines: %q", raw)
	}
	if got := metric(t, e, "tlsproxy_certificate_expiring", ""); got != 2 {
		t.Errorf("tlsproxy_certificate_expiring = %v, want 2", got)
	}
	labels := `role="server",serial="` + warns[0]["serial"].(string) + `",subject="CN=soon.example"`
	if got := metric(t, e, "tlsproxy_certificate_not_after_timestamp_seconds", labels); got != float64(notAfter.Unix()) {
		t.Errorf("not-after of the server certificate = %v, want %d", got, notAfter.Unix())
	}
	_, status := adminGet(t, e, "/status")
	if !strings.Contains(status, `"expiry": "warning"`) || !strings.Contains(status, `"expiry": "expired"`) || !strings.Contains(status, `"expiry_warning_days": 90`) {
		t.Errorf("/status: %s", status)
	}
}

// selfSigned returns a CA certificate like ca's whose validity ended at
// notAfter, as PEM.
func selfSigned(t *testing.T, ca *tlsconf.CA, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: ca.Cert.Subject,
		NotBefore: notAfter.Add(-48 * time.Hour), NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, ca.Key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestExpiryOfClientCertificates: per client identity the proxy keeps the
// earliest expiry among the certificates presented, logs one WARN a day
// per identity inside the window, and exports it as a metric.
func TestExpiryOfClientCertificates(t *testing.T) {
	e := startPlain(t, nil)
	dial := func(days int) {
		c := e.pki.issueClient(t, tlsconf.LeafOptions{CommonName: "billing-api", NotAfter: time.Now().Add(time.Duration(days) * 24 * time.Hour)})
		cfg := e.pki.clientTLS()
		cfg.Certificates = []tls.Certificate{c}
		conn, err := tls.Dial("tcp", e.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, cmd("PING"), "+PONG\r\n")
		conn.Close()
	}
	dial(200) // outside the window: nothing logged
	dial(41)
	dial(60) // a later one does not hide the earlier
	dial(41)
	lines, raw := safetyLogLines(t, e, "client certificate of billing-api expires in")
	if len(lines) != 1 || lines[0]["identity"] != "billing-api" || lines[0]["days_left"] != 40.0 && lines[0]["days_left"] != 41.0 {
		t.Fatalf("client certificate WARN lines (want one a day): %q", raw)
	}
	got := metric(t, e, "tlsproxy_client_certificate_not_after_timestamp_seconds", `identity="billing-api"`)
	if want := float64(time.Now().Add(41 * 24 * time.Hour).Unix()); got < want-120 || got > want+5 {
		t.Errorf("client certificate expiry metric = %v, want about %v (the earliest, 41 days)", got, want)
	}
}

// TestClientCertsBounded: the identities kept are bounded; a full table
// makes room by dropping identities not seen for a day, else refuses new
// ones; an identity not seen for a day starts over with its new certificate.
func TestClientCertsBounded(t *testing.T) {
	cc := newClientCerts()
	cc.max = 2
	now := time.Now()
	leaf := func(days int) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(int64(days)), NotAfter: now.Add(time.Duration(days) * 24 * time.Hour)}
	}
	cc.observe("a", leaf(10), now, 90*24*time.Hour)
	cc.observe("b", leaf(20), now, 90*24*time.Hour)
	cc.observe("c", leaf(30), now, 90*24*time.Hour)
	if len(cc.byID) != 2 || cc.dropped != 1 {
		t.Fatalf("kept %d, dropped %d; want 2 and 1", len(cc.byID), cc.dropped)
	}
	later := now.Add(25 * time.Hour)
	cc.observe("b", leaf(300), later, 90*24*time.Hour) // a day later: its old certificate no longer counts
	cc.observe("c", leaf(30), later, 90*24*time.Hour)  // "a" was not seen for a day: evicted
	if _, ok := cc.byID["a"]; ok || len(cc.byID) != 2 {
		t.Fatalf("after eviction: %v", cc.byID)
	}
	if got := cc.byID["b"].notAfter; !got.Equal(leaf(300).NotAfter) {
		t.Fatalf("b's expiry after a day = %v, want its new certificate's", got)
	}
	if top := cc.earliest(1, later); len(top) != 1 || top[0].id != "c" {
		t.Fatalf("earliest = %v", top)
	}
}

// TestExpiryOfRedisCertificate: on a rediss:// upstream, the certificate
// Redis presents is monitored like the proxy's own.
func TestExpiryOfRedisCertificate(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	rc, rk := issueFiles(t, p, dir, "redis", tlsconf.LeafOptions{CommonName: "redis.internal", IPs: []net.IP{net.ParseIP("127.0.0.1")},
		Server: true, NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	rs := testredis.Start(t, testredis.Options{TLS: &testredis.TLS{CertFile: rc, KeyFile: rk, CAFile: p.caFile}})
	e := startProxy(t, p, "rediss://"+rs.Addr, func(c *config.Config) { c.Upstream.TLS.CAFile = p.caFile })
	roundTrip(t, safetyProxy(t, e).c, cmd("PING"), "+PONG\r\n")
	lines, raw := safetyLogLines(t, e, "certificate inside tls.expiry_warning: rotate it")
	if len(lines) != 1 || lines[0]["role"] != "upstream-server" || lines[0]["subject"] != "CN=redis.internal" {
		t.Fatalf("WARN lines: %q", raw)
	}
	if _, status := adminGet(t, e, "/status"); !strings.Contains(status, `"role": "upstream-server"`) || !strings.Contains(status, `"expiry": "critical"`) {
		t.Fatalf("/status: %s", status)
	}
}

// TestOpenSecretWarning: a key file readable by others gets a start-up
// warning naming the key and the mode; a 0600 one does not.
func TestOpenSecretWarning(t *testing.T) {
	p := newPKI(t)
	if err := os.Chmod(p.keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	rs := testredis.Start(t, testredis.Options{})
	e := startProxy(t, p, "redis://"+rs.Addr, nil)
	lines, raw := safetyLogLines(t, e, "WARNING: a secret file is readable by group or others")
	if len(lines) != 1 || lines[0]["key"] != "listen.tls.key_file" || lines[0]["mode"] != "0644" {
		t.Fatalf("warnings: %q", raw)
	}
	if e2 := startPlain(t, nil); contains(e2.logs.String(), "secret file is readable") {
		t.Fatal("a 0600 key file was warned about")
	}
}
