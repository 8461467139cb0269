package tlsconf

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/rs/zerolog"
)

// Identity is who a client is, taken from its verified certificate.
type Identity struct {
	CommonName         string
	Organization       []string
	OrganizationalUnit []string
	DNSNames           []string
	URIs               []string // e.g. SPIFFE IDs such as spiffe://example.org/app
	IPAddresses        []string
	Fingerprint        string // SHA-256 of the leaf certificate's DER, lower-case hex
}

// IdentityFromState returns the identity of the peer's leaf certificate. It is the
// zero Identity when the peer sent no certificate or when the certificate was not
// verified (only verified chains count, so an identity can never be spoofed).
func IdentityFromState(cs tls.ConnectionState) Identity {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}
	}
	leaf := cs.VerifiedChains[0][0]
	sum := sha256.Sum256(leaf.Raw)
	id := Identity{
		CommonName:         leaf.Subject.CommonName,
		Organization:       leaf.Subject.Organization,
		OrganizationalUnit: leaf.Subject.OrganizationalUnit,
		DNSNames:           leaf.DNSNames,
		Fingerprint:        hex.EncodeToString(sum[:]),
	}
	for _, u := range leaf.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	for _, ip := range leaf.IPAddresses {
		id.IPAddresses = append(id.IPAddresses, ip.String())
	}
	return id
}

// IsZero reports whether id is the anonymous identity (no verified certificate).
func (id Identity) IsZero() bool {
	return id.CommonName == "" && id.Fingerprint == "" && len(id.Organization) == 0 &&
		len(id.OrganizationalUnit) == 0 && len(id.DNSNames) == 0 && len(id.URIs) == 0 && len(id.IPAddresses) == 0
}

// MarshalZerologObject logs the identity as fields cn, o, ou, dns, uri, ip and
// sha256, omitting empty ones: log.Info().Object("identity", id).
func (id Identity) MarshalZerologObject(e *zerolog.Event) {
	if id.CommonName != "" {
		e.Str("cn", id.CommonName)
	}
	strs := func(key string, v []string) {
		if len(v) > 0 {
			e.Strs(key, v)
		}
	}
	strs("o", id.Organization)
	strs("ou", id.OrganizationalUnit)
	strs("dns", id.DNSNames)
	strs("uri", id.URIs)
	strs("ip", id.IPAddresses)
	if id.Fingerprint != "" {
		e.Str("sha256", id.Fingerprint)
	}
}

// String is a short human-readable name: "CN=app1", else the first URI, DNS or IP
// SAN ("URI=spiffe://..."), else "SHA256=<first 16 hex digits>"; "anonymous" for the
// zero Identity.
func (id Identity) String() string {
	switch {
	case id.IsZero():
		return "anonymous"
	case id.CommonName != "":
		return "CN=" + id.CommonName
	case len(id.URIs) > 0:
		return "URI=" + id.URIs[0]
	case len(id.DNSNames) > 0:
		return "DNS=" + id.DNSNames[0]
	case len(id.IPAddresses) > 0:
		return "IP=" + id.IPAddresses[0]
	case len(id.Fingerprint) >= 16:
		return "SHA256=" + id.Fingerprint[:16]
	}
	return "O=" + strings.Join(slices.Concat(id.Organization, id.OrganizationalUnit), ",")
}
