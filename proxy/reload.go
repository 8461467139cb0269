package proxy

import (
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// Reloading: a new configuration is loaded and checked whole, and only then
// swapped in. New handshakes use the new certificates and CAs at once; new
// connections to Redis use the new upstream certificate, CA and password;
// established sessions and upstream connections keep running. A reload
// that fails changes nothing.

// material is what a reload swaps.
type material struct {
	server   *tls.Config
	admin    *tls.Config
	upstream *tls.Config // nil for a plain upstream
	password string
	certs    []certInfo
	limits   config.Limits
	policy   config.TLS
}

func (s *Server) swap(m material) {
	now := time.Now()
	s.serverTLS.Store(m.server)
	if s.adminTLS.Load() != nil && m.admin != nil {
		s.adminTLS.Store(m.admin) // turning HTTPS on or off needs a restart
	}
	s.certs.Store(&m.certs)
	s.limits.Store(&m.limits)
	s.tlsPolicy.Store(&m.policy)
	s.loadedAt.Store(&now)
}

// reloadable are the keys a reload applies; any other key that changed is
// reported as needing a restart. (log.level is applied by the caller,
// which owns the logger.)
var reloadable = []string{
	"listen.tls.cert_file", "listen.tls.key_file", "listen.tls.client_ca_file", "listen.tls.client_auth", "listen.tls.min_version",
	"upstream.password_file", "upstream.tls.ca_file", "upstream.tls.server_name", "upstream.tls.cert_file", "upstream.tls.key_file",
	"admin.tls.cert_file", "admin.tls.key_file", "admin.tls.client_ca_file",
	"limits.max_clients", "limits.idle_timeout", "limits.client_output_buffer",
	"tls.reload_interval", "tls.expiry_warning", "log.level",
}

// NoteReload counts and logs the outcome of a reload that why triggered
// (SIGHUP, a file change, the interval).
func (s *Server) NoteReload(why string, err error) {
	if err != nil {
		s.stats.reloads[1].Add(1)
		s.log.Error().Str("trigger", why).Str("error", err.Error()).Msg("reload failed: nothing changed")
		return
	}
	s.stats.reloads[0].Add(1)
	s.log.Info().Str("trigger", why).Msg("reloaded certificates, keys, CA bundles and password file")
}

// Reload applies cfg's certificates, keys, CA bundles, upstream password
// file and limits, after loading and checking all of them; on any error
// nothing changes. Changed keys that need a restart are logged.
func (s *Server) Reload(cfg config.Config) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if err := cfg.Validate(); err != nil {
		return err
	}
	var m material
	var err error
	if m.server, err = tlsconf.ServerConfig(cfg.Listen.TLS); err != nil {
		return err
	}
	if m.admin, err = tlsconf.AdminConfig(cfg.Admin.TLS); err != nil {
		return err
	}
	target, err := cfg.Upstream.Target() // reads upstream.password_file
	if err != nil {
		return err
	}
	if target.TLS {
		host, _, _ := net.SplitHostPort(target.Address)
		if m.upstream, err = tlsconf.ClientConfig(cfg.Upstream.TLS, host); err != nil {
			return err
		}
	}
	if m.certs, err = loadCertInfo(cfg); err != nil {
		return err
	}
	m.password, m.limits, m.policy = target.Password, cfg.Limits, cfg.TLS

	var restart []string
	for _, k := range config.Changed(s.cfg, cfg) {
		if !slices.Contains(reloadable, k) {
			restart = append(restart, k)
		}
	}
	if len(restart) > 0 {
		s.log.Warn().Str("keys", strings.Join(restart, ", ")).Msg("changed in the configuration but not applied: they need a restart")
	}
	s.swap(m)
	s.pool.SetPassword(m.password)
	s.anyPool(func(p *upstream.Pool) bool {
		p.SetTLS(m.upstream)
		return false
	})
	s.logExpiry(time.Now(), s.allCerts())
	return nil
}
