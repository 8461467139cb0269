package tlsconf

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

func TestServerConfigHandshakes(t *testing.T) {
	p := newPKI(t)
	other, err := NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	good := p.issue(t, LeafOptions{CommonName: "app1", Client: true})
	unknownCA, err := other.Issue(LeafOptions{CommonName: "app1", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	expired := p.issue(t, LeafOptions{CommonName: "old", Client: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	serverOnly := p.issue(t, LeafOptions{CommonName: "not-a-client", Server: true})

	tests := []struct {
		name       string
		clientAuth string
		minVersion string
		leaf       *Leaf
		tweak      func(*tls.Config)
		wantOK     bool
		wantCN     string
	}{
		{"require: good cert", "require", "1.2", &good, nil, true, "app1"},
		{"require: no cert", "require", "1.2", nil, nil, false, ""},
		{"require: unknown CA", "require", "1.2", &unknownCA, nil, false, ""},
		{"require: expired", "require", "1.2", &expired, nil, false, ""},
		{"require: no client-auth usage", "require", "1.2", &serverOnly, nil, false, ""},
		{"require: TLS 1.2 client", "require", "1.2", &good, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, true, "app1"},
		{"require: TLS 1.1 client", "require", "1.2", &good, func(c *tls.Config) {
			c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
		}, false, ""},
		{"min 1.3: TLS 1.2 client", "require", "1.3", &good, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }, false, ""},
		{"min 1.3: TLS 1.3 client", "require", "1.3", &good, nil, true, "app1"},
		{"verify-if-given: no cert", "verify-if-given", "1.2", nil, nil, true, ""},
		{"verify-if-given: good cert", "verify-if-given", "1.2", &good, nil, true, "app1"},
		{"verify-if-given: unknown CA", "verify-if-given", "1.2", &unknownCA, nil, false, ""},
		{"none: no cert", "none", "1.2", nil, nil, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, err := ServerConfig(p.listenTLS(tt.clientAuth, tt.minVersion))
			if err != nil {
				t.Fatal(err)
			}
			client := p.clientConfig(t, tt.leaf)
			if tt.tweak != nil {
				tt.tweak(client)
			}
			r := handshake(t, server, client)
			if tt.wantOK {
				if r.serverErr != nil || r.clientErr != nil {
					t.Fatalf("want success, got server %v, client %v", r.serverErr, r.clientErr)
				}
				if got := IdentityFromState(r.serverState).CommonName; got != tt.wantCN {
					t.Errorf("identity CN %q, want %q", got, tt.wantCN)
				}
				return
			}
			if r.serverErr == nil || r.clientErr == nil {
				t.Fatalf("want both sides to fail, got server %v, client %v", r.serverErr, r.clientErr)
			}
		})
	}
}

// serverFiles is the part of listen.tls that TestServerConfigErrors varies.
type serverFiles struct{ cert, key, ca, auth, min string }

func TestServerConfigErrors(t *testing.T) {
	p := newPKI(t)
	otherServer := p.issue(t, LeafOptions{CommonName: "localhost", Server: true})
	otherKey := p.write(t, "other.key", otherServer.KeyPEM)
	expired := p.issue(t, LeafOptions{CommonName: "localhost", Server: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	expiredCert := p.write(t, "expired.crt", expired.CertPEM)
	expiredKey := p.write(t, "expired.key", expired.KeyPEM)
	garbage := p.write(t, "garbage.pem", []byte("not PEM at all\n"))
	missing := p.dir + "/missing.pem"

	tests := []struct {
		name   string
		modify func(c *serverFiles)
		want   []string
	}{
		{"missing cert", func(c *serverFiles) { c.cert = missing },
			[]string{"listen.tls.cert_file", missing}},
		{"missing key", func(c *serverFiles) { c.key = missing },
			[]string{"listen.tls.key_file", missing}},
		{"mismatched key", func(c *serverFiles) { c.key = otherKey },
			[]string{"listen.tls.cert_file", p.serverCert, "listen.tls.key_file", otherKey, "do not belong together"}},
		{"swapped files", func(c *serverFiles) { c.cert, c.key = p.serverKey, p.serverCert },
			[]string{"listen.tls.cert_file", "swapped"}},
		{"garbage key", func(c *serverFiles) { c.key = garbage },
			[]string{"listen.tls.key_file", garbage, "no PEM private key"}},
		{"expired cert", func(c *serverFiles) { c.cert, c.key = expiredCert, expiredKey },
			[]string{"listen.tls.cert_file", expiredCert, "expired"}},
		{"missing CA", func(c *serverFiles) { c.ca = missing },
			[]string{"listen.tls.client_ca_file", missing}},
		{"garbage CA", func(c *serverFiles) { c.ca = garbage },
			[]string{"listen.tls.client_ca_file", garbage, "no PEM CERTIFICATE"}},
		{"no CA with require", func(c *serverFiles) { c.ca = "" },
			[]string{"listen.tls.client_ca_file: is required"}},
		{"bad client_auth", func(c *serverFiles) { c.auth = "maybe" },
			[]string{`listen.tls.client_auth: "maybe" is not one of require, verify-if-given, none`}},
		{"bad min_version", func(c *serverFiles) { c.min = "1.0" },
			[]string{`listen.tls.min_version: "1.0"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serverFiles{p.serverCert, p.serverKey, p.caFile, "require", "1.2"}
			tt.modify(&c)
			lt := p.listenTLS(c.auth, c.min)
			lt.CertFile, lt.KeyFile, lt.ClientCAFile = c.cert, c.key, c.ca
			_, err := ServerConfig(lt)
			if err == nil {
				t.Fatal("want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestServerConfigNoneWithoutCA(t *testing.T) {
	p := newPKI(t)
	lt := p.listenTLS("none", "1.2")
	lt.ClientCAFile = ""
	cfg, err := ServerConfig(lt)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.NoClientCert || cfg.ClientCAs != nil || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("unexpected config: auth %v, CAs %v, min %x", cfg.ClientAuth, cfg.ClientCAs, cfg.MinVersion)
	}
}

// TestKeyPairReloadKeepsGoodCertificate checks the reload contract that hot reload
// will rely on: a bad file never replaces the certificate being served.
func TestKeyPairReloadKeepsGoodCertificate(t *testing.T) {
	p := newPKI(t)
	kp, err := loadKeyPair("listen.tls.cert_file", p.serverCert, "listen.tls.key_file", p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := kp.getCertificate(nil)
	p.write(t, "server.crt", []byte("broken"))
	if err := kp.reload(); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if after, _ := kp.getCertificate(nil); after != before {
		t.Error("broken reload replaced the served certificate")
	}
	fresh := p.issue(t, LeafOptions{CommonName: "localhost", Server: true})
	p.write(t, "server.crt", fresh.CertPEM)
	p.write(t, "server.key", fresh.KeyPEM)
	if err := kp.reload(); err != nil {
		t.Fatal(err)
	}
	if after, _ := kp.getCertificate(nil); after == before {
		t.Error("good reload did not replace the certificate")
	}
}
