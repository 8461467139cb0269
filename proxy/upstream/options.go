package upstream

import (
	"net"

	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// OptionsFor resolves the upstream part of cfg into dial options: the
// target parsed from upstream.url, the password read from
// upstream.password_file, and for rediss:// the TLS configuration (CA,
// client certificate) loaded.
func OptionsFor(cfg config.Config) (Options, config.Target, error) {
	t, err := cfg.Upstream.Target()
	if err != nil {
		return Options{}, t, err
	}
	u := cfg.Upstream
	o := Options{
		Network: t.Network, Address: t.Address, Username: t.Username, Password: t.Password, DB: t.DB,
		DialTimeout: u.DialTimeout, ReadTimeout: u.ReadTimeout, WriteTimeout: u.WriteTimeout,
	}
	if t.TLS {
		host, _, _ := net.SplitHostPort(t.Address)
		if o.TLS, err = tlsconf.ClientConfig(u.TLS, host); err != nil {
			return o, t, err
		}
	}
	return o, t, nil
}
