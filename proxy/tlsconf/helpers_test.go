package tlsconf

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// pki is a CA with a server certificate, written to a temp dir as the proxy expects.
type pki struct {
	ca                            *CA
	dir                           string
	caFile, serverCert, serverKey string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{ca: ca, dir: t.TempDir()}
	server := p.issue(t, LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	p.caFile = p.write(t, "ca.crt", ca.CertPEM)
	p.serverCert = p.write(t, "server.crt", server.CertPEM)
	p.serverKey = p.write(t, "server.key", server.KeyPEM)
	return p
}

func (p *pki) issue(t *testing.T, o LeafOptions) Leaf {
	t.Helper()
	l, err := p.ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (p *pki) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (p *pki) listenTLS(clientAuth, minVersion string) config.ListenTLS {
	return config.ListenTLS{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile,
		ClientAuth: clientAuth, MinVersion: minVersion}
}

// clientConfig trusts the CA and always presents leaf when it is non-nil.
func (p *pki) clientConfig(t *testing.T, leaf *Leaf) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}
	if leaf != nil {
		cert, err := leaf.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		// GetClientCertificate sends the certificate even when its CA is not among the
		// server's acceptable CAs (Certificates would silently send none then).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg
}

type result struct {
	serverErr, clientErr error
	serverState          tls.ConnectionState
}

// handshake runs a real TLS handshake over a 127.0.0.1 TCP connection. The server
// writes "ok" after its handshake and the client reads it, so a rejection that TLS 1.3
// reports only after the client's Finished still surfaces as clientErr.
func handshake(t *testing.T, server, client *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type serverResult struct {
		err   error
		state tls.ConnectionState
	}
	done := make(chan serverResult, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- serverResult{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(conn, server)
		if err := tc.Handshake(); err != nil {
			done <- serverResult{err: err}
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- serverResult{err: err, state: tc.ConnectionState()}
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(conn, client)
	clientErr := tc.Handshake()
	if clientErr == nil {
		_, clientErr = io.ReadFull(tc, make([]byte, 2))
	}
	sr := <-done
	return result{serverErr: sr.err, clientErr: clientErr, serverState: sr.state}
}
