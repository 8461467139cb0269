package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

func TestWriteDev(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs", "dev")
	if err := WriteDev(dir, false); err != nil {
		t.Fatal(err)
	}
	modes := map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644,
		"server.key": 0o600, "client.crt": 0o644, "client.key": 0o600}
	for name, want := range modes {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o755 {
		t.Errorf("dir mode %v", st.Mode().Perm())
	}

	// The written set works end to end: server config from the files, the client
	// certificate accepted, and the server certificate valid for every loopback name.
	server, err := ServerConfig(config.ListenTLS{CertFile: filepath.Join(dir, "server.crt"),
		KeyFile: filepath.Join(dir, "server.key"), ClientCAFile: filepath.Join(dir, "ca.crt"),
		ClientAuth: "require", MinVersion: "1.2"})
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt has no certificate")
	}
	cert, err := readKeyPair("client", filepath.Join(dir, "client.crt"), "client", filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.Subject.CommonName != "dev-client" {
		t.Errorf("client CN %q", cert.Leaf.Subject.CommonName)
	}
	serverPEM, _ := os.ReadFile(filepath.Join(dir, "server.crt"))
	block, _ := pem.Decode(serverPEM)
	serverLeaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := serverLeaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("server certificate not valid for %s: %v", name, err)
		}
	}
	r := handshake(t, server, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{*cert}})
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("handshake with dev certs: server %v, client %v", r.serverErr, r.clientErr)
	}
	if got := IdentityFromState(r.serverState).String(); got != "CN=dev-client" {
		t.Errorf("identity %q", got)
	}

	// A second run refuses, naming the file, and leaves the set untouched.
	before, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	err = WriteDev(dir, false)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "ca.crt")) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second WriteDev: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(after) != string(before) {
		t.Error("refused WriteDev changed ca.key")
	}

	// force overwrites, and tightens a loosened key file back to 0600.
	if err := os.Chmod(filepath.Join(dir, "client.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDev(dir, true); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(after) == string(before) {
		t.Error("forced WriteDev kept the old CA key")
	}
	if st, _ := os.Stat(filepath.Join(dir, "client.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("client.key mode %v after force", st.Mode().Perm())
	}
}

func TestWriteDevRefusesSingleExistingFile(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "client.key")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteDev(dir, false)
	if err == nil || !strings.Contains(err.Error(), existing) {
		t.Fatalf("want error naming %s, got %v", existing, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		t.Error("WriteDev wrote some files before refusing")
	}
}

func TestIssue(t *testing.T) {
	ca, err := NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ca.Issue(LeafOptions{CommonName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Errorf("issued leaf does not verify: %v", err)
	}
	if _, err := ca.Issue(LeafOptions{CommonName: "x", NotBefore: c.Leaf.NotAfter, NotAfter: c.Leaf.NotBefore}); err == nil {
		t.Error("inverted validity accepted")
	}
}
