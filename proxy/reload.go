package proxy

import (
	"crypto/tls"
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

// Settings is a configuration resolved into what the proxy uses: every
// file read once, the TLS configurations built, the upstream password read
// from its file. Resolve builds it, whole or not at all; New starts from
// one and Apply swaps one in.
type Settings struct {
	cfg      config.Config
	target   config.Target
	server   *tls.Config
	admin    *tls.Config      // nil: plain HTTP
	upstream upstream.Options // TLS nil for a plain upstream
	certs    []certInfo
}

// Resolve checks cfg and loads everything it names; any error (naming the
// key and the file) leaves nothing half-built.
func Resolve(cfg config.Config) (*Settings, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	set := &Settings{cfg: cfg}
	var err error
	if set.server, err = tlsconf.ServerConfig(cfg.Listen.TLS); err != nil {
		return nil, err
	}
	if set.admin, err = tlsconf.AdminConfig(cfg.Admin.TLS); err != nil {
		return nil, err
	}
	if set.upstream, set.target, err = upstream.OptionsFor(cfg); err != nil { // reads upstream.password_file
		return nil, err
	}
	if set.certs, err = loadCertInfo(cfg); err != nil {
		return nil, err
	}
	return set, nil
}

func (s *Server) swap(set *Settings) {
	now := time.Now()
	s.serverTLS.Store(set.server)
	if s.adminTLS.Load() != nil && set.admin != nil {
		s.adminTLS.Store(set.admin) // turning HTTPS on or off needs a restart
	}
	s.certs.Store(&set.certs)
	limits, policy := set.cfg.Limits, set.cfg.TLS
	s.limits.Store(&limits)
	s.tlsPolicy.Store(&policy)
	s.loadedAt.Store(&now)
}

// reloadable are the keys a reload applies; any other key that changed is
// reported as needing a restart. (log.level is applied by the caller,
// which owns the logger.)
var reloadable = []string{
	"listen.tls.cert_file", "listen.tls.key_file", "listen.tls.client_ca_file", "listen.tls.client_auth", "listen.tls.min_version",
	"listen.tls.cipher_suites",
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

// Apply swaps in resolved settings: new handshakes use the new server
// certificate and client CAs at once, new connections to Redis the new
// upstream certificate, CA and password; open connections keep theirs.
// Changed keys that need a restart are logged, not applied.
func (s *Server) Apply(set *Settings) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var restart []string
	for _, k := range config.Changed(s.cfg, set.cfg) {
		if !slices.Contains(reloadable, k) {
			restart = append(restart, k)
		}
	}
	if len(restart) > 0 {
		s.log.Warn().Str("keys", strings.Join(restart, ", ")).Msg("changed in the configuration but not applied: they need a restart")
	}
	s.swap(set)
	s.pool.SetPassword(set.upstream.Password)
	s.anyPool(func(p *upstream.Pool) bool {
		p.SetTLS(set.upstream.TLS)
		return false
	})
	s.logExpiry(time.Now(), s.allCerts())
}
