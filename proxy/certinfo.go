package proxy

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/config"
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
}

// The expiry policy the status page colours by: rotate certificates 90
// days before they expire; under 14 days is critical.
const (
	expiryWarning  = 90 * 24 * time.Hour
	expiryCritical = 14 * 24 * time.Hour
)

// expiryClass is "expired", "critical", "warning" or "ok".
func (c certInfo) expiryClass(now time.Time) string {
	left := c.NotAfter.Sub(now)
	switch {
	case left <= 0:
		return "expired"
	case left < expiryCritical:
		return "critical"
	case left < expiryWarning:
		return "warning"
	}
	return "ok"
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
		data, err := os.ReadFile(f.file)
		if err != nil {
			return nil, err
		}
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.file, err)
			}
			out = append(out, certInfo{
				Role: f.role, File: f.file, Subject: c.Subject.String(), Issuer: c.Issuer.String(),
				Serial: fmt.Sprintf("%x", c.SerialNumber), NotAfter: c.NotAfter,
			})
		}
	}
	return out, nil
}
