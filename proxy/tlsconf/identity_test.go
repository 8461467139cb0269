package tlsconf

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/url"
	"reflect"
	"testing"

	"github.com/rs/zerolog"
)

func TestIdentityFromState(t *testing.T) {
	p := newPKI(t)
	spiffe, _ := url.Parse("spiffe://example.org/ns/prod/sa/app1")
	leaf := p.issue(t, LeafOptions{
		CommonName:         "app1",
		Organization:       []string{"Acme"},
		OrganizationalUnit: []string{"ops", "payments"},
		DNSNames:           []string{"app1.internal"},
		IPs:                []net.IP{net.IPv4(127, 0, 0, 2)},
		URIs:               []*url.URL{spiffe},
		Client:             true,
	})
	server, err := ServerConfig(p.listenTLS("require", "1.2"))
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, server, p.clientConfig(t, &leaf))
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("handshake: server %v, client %v", r.serverErr, r.clientErr)
	}
	block, _ := pem.Decode(leaf.CertPEM)
	sum := sha256.Sum256(block.Bytes)
	want := Identity{
		CommonName:         "app1",
		Organization:       []string{"Acme"},
		OrganizationalUnit: []string{"ops", "payments"},
		DNSNames:           []string{"app1.internal"},
		URIs:               []string{"spiffe://example.org/ns/prod/sa/app1"},
		IPAddresses:        []string{"127.0.0.2"},
		Fingerprint:        hex.EncodeToString(sum[:]),
	}
	id := IdentityFromState(r.serverState)
	if !reflect.DeepEqual(id, want) {
		t.Errorf("identity\n got %#v\nwant %#v", id, want)
	}
	if id.String() != "CN=app1" {
		t.Errorf("String() = %q", id.String())
	}

	var buf bytes.Buffer
	log := zerolog.New(&buf)
	log.Info().Object("identity", id).Send()
	var logged struct {
		Identity map[string]any `json:"identity"`
	}
	if err := json.Unmarshal(buf.Bytes(), &logged); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	for _, k := range []string{"cn", "o", "ou", "dns", "uri", "ip", "sha256"} {
		if _, ok := logged.Identity[k]; !ok {
			t.Errorf("log lacks %q: %s", k, buf.String())
		}
	}
}

func TestIdentityAnonymousAndUnverified(t *testing.T) {
	if id := IdentityFromState(tls.ConnectionState{}); !id.IsZero() || id.String() != "anonymous" {
		t.Errorf("no certificate: %+v %q", id, id.String())
	}
	// A peer certificate that was not verified must not become an identity.
	p := newPKI(t)
	leaf := p.issue(t, LeafOptions{CommonName: "mallory", Client: true})
	cert, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	unverified := tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert.Leaf}}
	if id := IdentityFromState(unverified); !id.IsZero() {
		t.Errorf("unverified certificate gave identity %v", id)
	}
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	log.Info().Object("identity", Identity{}).Send()
	if !bytes.Contains(buf.Bytes(), []byte(`"identity":{}`)) {
		t.Errorf("zero identity should log no fields: %s", buf.String())
	}
}

func TestIdentityString(t *testing.T) {
	tests := []struct {
		id   Identity
		want string
	}{
		{Identity{}, "anonymous"},
		{Identity{CommonName: "app1", URIs: []string{"spiffe://x/y"}}, "CN=app1"},
		{Identity{URIs: []string{"spiffe://x/y"}, DNSNames: []string{"a"}}, "URI=spiffe://x/y"},
		{Identity{DNSNames: []string{"a.example"}}, "DNS=a.example"},
		{Identity{IPAddresses: []string{"127.0.0.1"}}, "IP=127.0.0.1"},
		{Identity{Fingerprint: "0123456789abcdef0123"}, "SHA256=0123456789abcdef"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.id, got, tt.want)
		}
	}
}
