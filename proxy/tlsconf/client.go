package tlsconf

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"

	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// ClientConfig builds the TLS configuration for connecting to Redis (rediss://).
// Redis's certificate is verified against upstream.tls.ca_file, or the system roots
// when that is empty, for the name upstream.tls.server_name, or host when that is
// empty. host may also be a host:port such as Target.Address. When
// upstream.tls.cert_file and key_file are set, they are presented as the client
// certificate if Redis asks for one (tls-auth-clients).
func ClientConfig(c config.UpstreamTLS, host string) (*tls.Config, error) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if cfg.ServerName == "" {
		return nil, errors.New("upstream.tls.server_name: is required when upstream.url has no host name to verify")
	}
	if c.CAFile != "" {
		pool, err := loadCertPool("upstream.tls.ca_file", c.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	// A nil RootCAs means the system roots.
	if c.CertFile != "" || c.KeyFile != "" {
		kp, err := loadKeyPair("upstream.tls.cert_file", c.CertFile, "upstream.tls.key_file", c.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = kp.getClientCertificate
	}
	return cfg, nil
}
