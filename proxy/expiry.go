package proxy

import (
	"crypto/x509"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Expiry monitoring: every certificate the proxy is configured with, the one
// Redis presents on a rediss:// upstream, and the clients' certificates. At
// start, after every reload and once a day, each certificate inside
// tls.expiry_warning is logged (WARN), and each expired one (ERROR); every
// client identity whose certificate is inside the window is logged once a
// day. The metrics say the same at any time.

// expiryCritical is where the status page turns red (the alert rules say
// the same).
const expiryCritical = 14 * 24 * time.Hour

// expiryClass is "expired", "critical", "warning" or "ok".
func expiryClass(notAfter, now time.Time, warning time.Duration) string {
	left := notAfter.Sub(now)
	switch {
	case left <= 0:
		return "expired"
	case left < expiryCritical:
		return "critical"
	case left < warning:
		return "warning"
	}
	return "ok"
}

func daysLeft(notAfter, now time.Time) int { return int(notAfter.Sub(now).Hours() / 24) }

// allCerts is the configured certificates and, once seen, Redis's.
func (s *Server) allCerts() []certInfo {
	certs := *s.certs.Load()
	if up := s.upstreamCert.Load(); up != nil {
		certs = append(certs[:len(certs):len(certs)], *up)
	}
	return certs
}

// noteUpstreamCert records the certificate Redis presented on a TLS dial.
func (s *Server) noteUpstreamCert(leaf *x509.Certificate) {
	c := certOf("upstream-server", "(presented by Redis)", leaf)
	if old := s.upstreamCert.Swap(&c); old == nil || old.Serial != c.Serial {
		s.logExpiry(time.Now(), []certInfo{c})
	}
}

// logExpiry logs the certificates inside the warning window or expired.
func (s *Server) logExpiry(now time.Time, certs []certInfo) {
	warning := s.expiryWarning()
	for _, c := range certs {
		var ev = s.log.Warn()
		msg := "certificate inside tls.expiry_warning: rotate it"
		switch expiryClass(c.NotAfter, now, warning) {
		case "ok":
			continue
		case "expired":
			ev, msg = s.log.Error(), "certificate expired"
		}
		ev.Str("role", c.Role).Str("file", c.File).Str("subject", c.Subject).Str("serial", c.Serial).
			Time("not_after", c.NotAfter).Int("days_left", daysLeft(c.NotAfter, now)).Msg(msg)
	}
}

func (s *Server) expiryWarning() time.Duration { return s.tlsPolicy.Load().ExpiryWarning }

// clientCerts keeps, per client identity, the earliest not-after among the
// certificates presented in the last day, in bounded memory.
type clientCerts struct {
	mu      sync.Mutex
	max     int
	byID    map[string]*clientCert
	dropped uint64 // identities not kept because the table was full
}

type clientCert struct {
	notAfter time.Time
	serial   string
	seen     time.Time // when a certificate of this identity was last presented
	warned   time.Time // when its expiry was last logged
}

// maxClientIdentities bounds the identities kept; maxClientMetrics the ones
// exported as metrics (the earliest to expire).
const (
	maxClientIdentities = 10000
	maxClientMetrics    = 500
	clientCertWindow    = 24 * time.Hour
)

func newClientCerts() *clientCerts {
	return &clientCerts{max: maxClientIdentities, byID: map[string]*clientCert{}}
}

// observe records that identity presented leaf at now; it reports whether
// the identity's expiry should be logged now (inside the window, not logged
// for a day).
func (cc *clientCerts) observe(identity string, leaf *x509.Certificate, now time.Time, warning time.Duration) (c clientCert, warn bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	e := cc.byID[identity]
	if e == nil {
		if len(cc.byID) >= cc.max {
			cc.evict(now)
		}
		if len(cc.byID) >= cc.max {
			cc.dropped++
			return clientCert{}, false
		}
		e = &clientCert{}
		cc.byID[identity] = e
	}
	if now.Sub(e.seen) > clientCertWindow || leaf.NotAfter.Before(e.notAfter) || e.notAfter.IsZero() {
		e.notAfter, e.serial = leaf.NotAfter, fmt.Sprintf("%x", leaf.SerialNumber)
	}
	e.seen = now
	if e.notAfter.Sub(now) < warning && now.Sub(e.warned) >= clientCertWindow {
		e.warned = now
		return *e, true
	}
	return *e, false
}

// evict drops the identities not seen for a day.
func (cc *clientCerts) evict(now time.Time) {
	for id, e := range cc.byID {
		if now.Sub(e.seen) > clientCertWindow {
			delete(cc.byID, id)
		}
	}
}

// clientExpiry is one identity's earliest certificate expiry.
type clientExpiry struct {
	id       string
	notAfter time.Time
}

// earliest returns up to n identities seen in the last day whose
// certificates expire first.
func (cc *clientCerts) earliest(n int, now time.Time) []clientExpiry {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	var out []clientExpiry
	for id, e := range cc.byID {
		if now.Sub(e.seen) <= clientCertWindow {
			out = append(out, clientExpiry{id, e.notAfter})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].notAfter.Before(out[j].notAfter) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// noteClientCert records a client's certificate after its handshake.
func (s *Server) noteClientCert(identity string, chain []*x509.Certificate) {
	if len(chain) == 0 {
		return
	}
	now := time.Now()
	c, warn := s.clientCerts.observe(identity, chain[0], now, s.expiryWarning())
	if warn {
		s.log.Warn().Str("identity", identity).Str("serial", c.serial).Time("not_after", c.notAfter).
			Int("days_left", daysLeft(c.notAfter, now)).
			Msg(fmt.Sprintf("client certificate of %s expires in %d days: rotate it", identity, daysLeft(c.notAfter, now)))
	}
}

// checkExpiryDaily logs the certificates inside the window once a day
// until stop is closed.
func (s *Server) checkExpiryDaily(stop <-chan struct{}) {
	t := time.NewTicker(24 * time.Hour)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			s.logExpiry(now, s.allCerts())
		case <-stop:
			return
		}
	}
}

// certOf describes a parsed certificate.
func certOf(role, file string, c *x509.Certificate) certInfo {
	return certInfo{Role: role, File: file, Subject: c.Subject.String(), Issuer: c.Issuer.String(),
		Serial: fmt.Sprintf("%x", c.SerialNumber), NotAfter: c.NotAfter}
}
