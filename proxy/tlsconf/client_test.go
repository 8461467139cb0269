package tlsconf

import (
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

func TestClientConfig(t *testing.T) {
	p := newPKI(t)
	other, err := NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := p.write(t, "other-ca.crt", other.CertPEM)
	client := p.issue(t, LeafOptions{CommonName: "tlsproxy", Client: true})
	clientCert := p.write(t, "client.crt", client.CertPEM)
	clientKey := p.write(t, "client.key", client.KeyPEM)

	tests := []struct {
		name       string
		tlsConf    config.UpstreamTLS
		host       string
		serverAuth string // how the fake Redis treats client certificates
		wantOK     bool
	}{
		{"trusted CA, IP host", config.UpstreamTLS{CAFile: p.caFile}, "127.0.0.1", "none", true},
		{"host with port", config.UpstreamTLS{CAFile: p.caFile}, "127.0.0.1:6379", "none", true},
		{"server_name override", config.UpstreamTLS{CAFile: p.caFile, ServerName: "localhost"}, "10.0.0.1", "none", true},
		{"wrong server_name", config.UpstreamTLS{CAFile: p.caFile, ServerName: "redis.example"}, "127.0.0.1", "none", false},
		{"untrusted CA", config.UpstreamTLS{CAFile: otherCA}, "127.0.0.1", "none", false},
		{"system roots do not know the test CA", config.UpstreamTLS{}, "127.0.0.1", "none", false},
		{"client cert to mTLS Redis", config.UpstreamTLS{CAFile: p.caFile, CertFile: clientCert, KeyFile: clientKey}, "localhost", "require", true},
		{"no client cert to mTLS Redis", config.UpstreamTLS{CAFile: p.caFile}, "localhost", "require", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, err := ServerConfig(p.listenTLS(tt.serverAuth, "1.2"))
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := ClientConfig(tt.tlsConf, tt.host)
			if err != nil {
				t.Fatal(err)
			}
			r := handshake(t, server, cfg)
			if ok := r.serverErr == nil && r.clientErr == nil; ok != tt.wantOK {
				t.Errorf("success %v, want %v (server %v, client %v)", ok, tt.wantOK, r.serverErr, r.clientErr)
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	p := newPKI(t)
	missing := p.dir + "/missing.pem"
	tests := []struct {
		name string
		c    config.UpstreamTLS
		host string
		want string
	}{
		{"missing CA", config.UpstreamTLS{CAFile: missing}, "127.0.0.1", "upstream.tls.ca_file"},
		{"missing client cert", config.UpstreamTLS{CertFile: missing, KeyFile: p.serverKey}, "127.0.0.1", "upstream.tls.cert_file"},
		{"key without cert", config.UpstreamTLS{KeyFile: p.serverKey}, "127.0.0.1", "upstream.tls.cert_file: is required"},
		{"no name to verify", config.UpstreamTLS{}, "", "upstream.tls.server_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ClientConfig(tt.c, tt.host)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
}
