// Package tlsconf builds the proxy's TLS configurations (client-facing server side and
// Redis-facing client side), extracts client identities from verified certificates,
// and generates development certificates.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// ServerConfig builds the client-facing TLS configuration from listen.tls: the server
// certificate, the client CA pool and the client-certificate policy. Every error names
// the config key and the file involved.
//
// The certificate is served through GetCertificate from an atomic pointer, so it can
// later be reloaded without restarting the listener.
func ServerConfig(c config.ListenTLS) (*tls.Config, error) {
	auth, err := clientAuthType(c.ClientAuth)
	if err != nil {
		return nil, err
	}
	minVersion, err := tlsVersion(c.MinVersion)
	if err != nil {
		return nil, err
	}
	kp, err := loadKeyPair("listen.tls.cert_file", c.CertFile, "listen.tls.key_file", c.KeyFile)
	if err != nil {
		return nil, err
	}
	var clientCAs *x509.CertPool
	switch {
	case c.ClientCAFile != "":
		if clientCAs, err = loadCertPool("listen.tls.client_ca_file", c.ClientCAFile); err != nil {
			return nil, err
		}
	case auth != tls.NoClientCert:
		return nil, fmt.Errorf("listen.tls.client_ca_file: is required when listen.tls.client_auth is %q", c.ClientAuth)
	}
	var suites []uint16
	for _, name := range c.CipherSuites {
		id, ok := config.CipherSuiteID(name)
		if !ok {
			return nil, fmt.Errorf("listen.tls.cipher_suites: %q is not a secure TLS 1.2 cipher suite", name)
		}
		suites = append(suites, id)
	}
	return &tls.Config{
		GetCertificate: kp.getCertificate,
		ClientAuth:     auth,
		ClientCAs:      clientCAs,
		MinVersion:     minVersion,
		CipherSuites:   suites,
	}, nil
}

func clientAuthType(mode string) (tls.ClientAuthType, error) {
	switch mode {
	case "require":
		return tls.RequireAndVerifyClientCert, nil
	case "verify-if-given":
		return tls.VerifyClientCertIfGiven, nil
	case "none":
		return tls.NoClientCert, nil
	}
	return 0, fmt.Errorf("listen.tls.client_auth: %q is not one of require, verify-if-given, none", mode)
}

func tlsVersion(v string) (uint16, error) {
	switch v {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("listen.tls.min_version: %q is not one of 1.2, 1.3", v)
}
