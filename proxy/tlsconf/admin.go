package tlsconf

import (
	"crypto/tls"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// AdminConfig builds the admin endpoint's HTTPS configuration from
// admin.tls, or returns nil when admin.tls.cert_file is empty (plain HTTP).
// With client_ca_file, clients need a certificate from that CA.
func AdminConfig(c config.AdminTLS) (*tls.Config, error) {
	if c.CertFile == "" {
		return nil, nil
	}
	kp, err := loadKeyPair("admin.tls.cert_file", c.CertFile, "admin.tls.key_file", c.KeyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{GetCertificate: kp.getCertificate, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile != "" {
		if tc.ClientCAs, err = loadCertPool("admin.tls.client_ca_file", c.ClientCAFile); err != nil {
			return nil, err
		}
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
