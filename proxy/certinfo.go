package proxy

import (
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// certInfo describes one certificate the proxy was configured with, for
// /status and the status page.
type certInfo struct {
	Role     string    `json:"role"` // server, client-ca, upstream-ca, upstream-client, admin
	File     string    `json:"file"`
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	DaysLeft int       `json:"days_left"`
	Expiry   string    `json:"expiry"` // ok, warning, critical or expired (tls.expiry_warning)
}

// loadCertInfo reads every certificate of the configuration's PEM files
// (New has already loaded and checked them).
func loadCertInfo(cfg config.Config) ([]certInfo, error) {
	var out []certInfo
	for _, f := range []struct{ role, file string }{
		{"server", cfg.Listen.TLS.CertFile},
		{"client-ca", cfg.Listen.TLS.ClientCAFile},
		{"upstream-ca", cfg.Upstream.TLS.CAFile},
		{"upstream-client", cfg.Upstream.TLS.CertFile},
		{"admin", cfg.Admin.TLS.CertFile},
		{"admin-client-ca", cfg.Admin.TLS.ClientCAFile},
	} {
		if f.file == "" {
			continue
		}
		certs, err := tlsconf.ReadCertificates(f.file)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			out = append(out, certOf(f.role, f.file, c))
		}
	}
	return out, nil
}

// warnOpenSecrets warns about key and password files that group or others
// may read.
func warnOpenSecrets(cfg config.Config, log zerolog.Logger) {
	for _, f := range []struct{ key, file string }{
		{"listen.tls.key_file", cfg.Listen.TLS.KeyFile},
		{"upstream.tls.key_file", cfg.Upstream.TLS.KeyFile},
		{"upstream.password_file", cfg.Upstream.PasswordFile},
		{"admin.tls.key_file", cfg.Admin.TLS.KeyFile},
	} {
		if f.file == "" {
			continue
		}
		if fi, err := os.Stat(f.file); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn().Str("key", f.key).Str("file", f.file).Str("mode", fmt.Sprintf("%04o", fi.Mode().Perm())).
				Msg("WARNING: a secret file is readable by group or others: chmod 600 it (or 640 for a group the proxy runs in)")
		}
	}
}
