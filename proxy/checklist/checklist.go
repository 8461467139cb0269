// Package checklist is the production checklist that `tlsproxy check` prints:
// one verdict per item (client authentication, TLS settings, certificates,
// the link to Redis, secrets' file modes, the admin endpoint), each with a
// reason an operator can act on.
//
// Every item is an independent function of the (already validated) config;
// the items marked online dial Redis and are skipped with Options.Offline.
package checklist

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// Statuses of a Result, worst last (except Skip).
const (
	Pass = "pass"
	Warn = "warn"
	Fail = "fail"
	Skip = "skip"
)

// Result is one checklist item's verdict.
type Result struct {
	Item   string `json:"item"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// Options tunes Run.
type Options struct {
	// Offline skips the items that need the network (they are reported
	// with status Skip).
	Offline bool
	// Now is the time certificates are checked at; zero means time.Now().
	Now time.Time
}

// check is one item of the checklist.
type check struct {
	item   string
	online bool // needs the network: skipped with Options.Offline
	run    func(ctx context.Context, cfg config.Config, o Options) Result
}

// checks is the checklist, in the order it is printed.
var checks = []check{
	{"client authentication", false, checkClientAuth},
	{"TLS version", false, checkTLSVersion},
	{"cipher suites", false, checkCipherSuites},
	{"server certificate", false, checkServerCert},
	{"client CA bundle", false, checkClientCAs},
	{"upstream link", false, checkUpstreamLink},
	{"redis reachable", true, checkRedisReachable},
	{"redis exposure", true, checkRedisExposure},
	{"secret file modes", false, checkSecretModes},
	{"admin endpoint", false, checkAdmin},
}

// Items returns the names of the checklist items, in order.
func Items() []string {
	var out []string
	for _, c := range checks {
		out = append(out, c.item)
	}
	return out
}

// Run checks cfg (which config.Load has validated) item by item.
func Run(ctx context.Context, cfg config.Config, o Options) []Result {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	out := make([]Result, 0, len(checks))
	for _, c := range checks {
		if c.online && o.Offline {
			out = append(out, Result{c.item, Skip, "needs the network; skipped (--offline)"})
			continue
		}
		r := c.run(ctx, cfg, o)
		r.Item = c.item
		out = append(out, r)
	}
	return out
}

// Failed reports whether any result is a Fail.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

// verdict collects the findings of one item: the status is the worst one, the
// reason lists them all (or the pass notes when nothing is wrong).
type verdict struct {
	status string
	notes  []string // pass notes
	issues []string // warn and fail findings
}

func (v *verdict) pass(format string, args ...any) {
	v.notes = append(v.notes, fmt.Sprintf(format, args...))
}

func (v *verdict) warn(format string, args ...any) {
	if v.status != Fail {
		v.status = Warn
	}
	v.issues = append(v.issues, fmt.Sprintf(format, args...))
}

func (v *verdict) fail(format string, args ...any) {
	v.status = Fail
	v.issues = append(v.issues, fmt.Sprintf(format, args...))
}

func (v *verdict) result() Result {
	if v.status == "" {
		return Result{Status: Pass, Reason: strings.Join(v.notes, "; ")}
	}
	return Result{Status: v.status, Reason: strings.Join(v.issues, "; ")}
}

func result(status, format string, args ...any) Result {
	return Result{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// 1. client authentication

func checkClientAuth(_ context.Context, cfg config.Config, _ Options) Result {
	switch m := cfg.Listen.TLS.ClientAuth; m {
	case "require":
		return result(Pass, "listen.tls.client_auth is require: every client needs a certificate from listen.tls.client_ca_file")
	case "verify-if-given", "none":
		return result(Fail, "listen.tls.client_auth is %s: clients without a certificate get the proxy's full Redis access; set it to require", m)
	default:
		return result(Fail, "listen.tls.client_auth %q is not one of %s", m, strings.Join(config.ClientAuthModes, ", "))
	}
}

// 2. TLS version

func checkTLSVersion(_ context.Context, cfg config.Config, _ Options) Result {
	switch v := cfg.Listen.TLS.MinVersion; v {
	case "1.2", "1.3":
		return result(Pass, "listen.tls.min_version is %s", v)
	default:
		return result(Fail, "listen.tls.min_version %q is not 1.2 or 1.3", v)
	}
}

// 3. cipher suites

// weakSuite says why a TLS 1.2 suite is not ECDHE with an AEAD cipher, or "".
func weakSuite(name string) string {
	var why []string
	if !strings.HasPrefix(name, "TLS_ECDHE_") {
		why = append(why, "no ECDHE key exchange (no forward secrecy)")
	}
	if !strings.Contains(name, "_GCM_") && !strings.Contains(name, "_CHACHA20_POLY1305") {
		why = append(why, "not an AEAD cipher (CBC or worse)")
	}
	return strings.Join(why, " and ")
}

func checkCipherSuites(_ context.Context, cfg config.Config, _ Options) Result {
	suites := cfg.Listen.TLS.CipherSuites
	var bad []string
	for _, s := range suites {
		if why := weakSuite(s); why != "" {
			bad = append(bad, s+": "+why)
		}
	}
	switch {
	case len(suites) == 0:
		return result(Fail, "listen.tls.cipher_suites is empty")
	case len(bad) > 0 && cfg.Listen.TLS.MinVersion == "1.3":
		return result(Pass, "listen.tls.min_version is 1.3, so the TLS 1.2 suites are never used (but remove %s)", strings.Join(bad, ", "))
	case len(bad) > 0:
		return result(Fail, "listen.tls.cipher_suites has %s; keep ECDHE with GCM or CHACHA20_POLY1305 only", strings.Join(bad, ", "))
	}
	return result(Pass, "all %d TLS 1.2 suites are ECDHE with an AEAD cipher", len(suites))
}

// 4. server certificate

func checkServerCert(_ context.Context, cfg config.Config, o Options) Result {
	lt := cfg.Listen.TLS
	var v verdict
	pair, err := tls.LoadX509KeyPair(lt.CertFile, lt.KeyFile)
	if err != nil {
		return result(Fail, "listen.tls.cert_file %q and key_file %q: %v", lt.CertFile, lt.KeyFile, err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return result(Fail, "listen.tls.cert_file %q: %v", lt.CertFile, err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	v.pass("matches its key")

	// Validity first: an expired certificate fails everything else too.
	if bad := validity(leaf, o.Now); bad != "" {
		v.fail("%s", bad)
		return v.result()
	}

	// Chain: the system roots, a self-signed CA at the end of cert_file, or
	// the client CA bundle (development setups sign both with one CA).
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verify := func(roots *x509.CertPool) error {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: o.Now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	var errs []string
	chained := ""
	if sys, err := x509.SystemCertPool(); err == nil {
		if err := verify(sys); err == nil {
			chained = "chains to a system root"
		} else {
			errs = append(errs, "system roots: "+err.Error())
		}
	}
	if last := chain[len(chain)-1]; chained == "" && len(chain) > 1 && last.IsCA && last.CheckSignatureFrom(last) == nil {
		pool := x509.NewCertPool()
		pool.AddCert(last)
		if err := verify(pool); err == nil {
			chained = fmt.Sprintf("chains to %q at the end of cert_file", last.Subject.CommonName)
		} else {
			errs = append(errs, "its own CA: "+err.Error())
		}
	}
	if chained == "" && lt.ClientCAFile != "" {
		if cas, err := tlsconf.ReadCertificates(lt.ClientCAFile); err == nil {
			pool := x509.NewCertPool()
			for _, c := range cas {
				pool.AddCert(c)
			}
			if err := verify(pool); err == nil {
				chained = "chains to a CA in listen.tls.client_ca_file"
			} else {
				errs = append(errs, "client CAs: "+err.Error())
			}
		}
	}
	if chained == "" {
		v.fail("does not chain to a system root, a CA in cert_file or listen.tls.client_ca_file (%s)", strings.Join(errs, "; "))
	} else {
		v.pass("%s", chained)
	}

	host, _, _ := net.SplitHostPort(cfg.Listen.Address)
	host = strings.Trim(host, "[]")
	sans := sanList(leaf)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		v.warn("listen.address %q is a wildcard: no host to check against the SANs (%s); clients must use one of them", cfg.Listen.Address, sans)
	} else if err := leaf.VerifyHostname(host); err != nil {
		kind := "DNS"
		if ip != nil {
			kind = "IP"
		}
		v.warn("no %s SAN for the listen host %s (SANs: %s): clients connecting to it by that address fail verification", kind, host, sans)
	} else {
		v.pass("SANs cover %s", host)
	}

	if left := leaf.NotAfter.Sub(o.Now); left < cfg.TLS.ExpiryWarning {
		v.warn("expires %s, in %s (inside tls.expiry_warning %s): rotate it", leaf.NotAfter.Format(time.DateOnly), days(left), days(cfg.TLS.ExpiryWarning))
	} else {
		v.pass("expires %s, in %s", leaf.NotAfter.Format(time.DateOnly), days(left))
	}
	return v.result()
}

// validity says why c is not valid at now, or "".
func validity(c *x509.Certificate, now time.Time) string {
	switch {
	case now.After(c.NotAfter):
		return fmt.Sprintf("%q expired on %s", c.Subject.CommonName, c.NotAfter.Format(time.DateOnly))
	case now.Before(c.NotBefore):
		return fmt.Sprintf("%q is not valid until %s", c.Subject.CommonName, c.NotBefore.Format(time.RFC3339))
	}
	return ""
}

func days(d time.Duration) string {
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func sanList(c *x509.Certificate) string {
	var s []string
	s = append(s, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		s = append(s, ip.String())
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// 5. client CA bundle

func checkClientCAs(_ context.Context, cfg config.Config, o Options) Result {
	file := cfg.Listen.TLS.ClientCAFile
	if file == "" {
		return result(Warn, "listen.tls.client_ca_file is not set: no client certificate is verified (see client authentication)")
	}
	cas, err := tlsconf.ReadCertificates(file)
	if err != nil {
		return result(Fail, "listen.tls.client_ca_file: %v", err)
	}
	if len(cas) == 0 {
		return result(Fail, "listen.tls.client_ca_file %q holds no certificate", file)
	}
	var v verdict
	v.pass("%d CA(s) in %s", len(cas), file)
	sys, sysErr := x509.SystemCertPool()
	if sysErr != nil {
		v.warn("cannot load the system roots to look for public CAs: %v", sysErr)
	}
	for _, ca := range cas {
		name := ca.Subject.CommonName
		if name == "" {
			name = ca.Subject.String()
		}
		if sys != nil && isPublic(ca, sys, o.Now) {
			v.fail("%q is a public CA (it verifies against the system roots): any certificate it issues would get in; use a private CA", name)
		}
		if bad := validity(ca, o.Now); bad != "" {
			v.fail("%s", bad)
		} else if left := ca.NotAfter.Sub(o.Now); left < cfg.TLS.ExpiryWarning {
			v.warn("%q expires %s, in %s (inside tls.expiry_warning)", name, ca.NotAfter.Format(time.DateOnly), days(left))
		}
	}
	return v.result()
}

// isPublic reports whether ca is, or chains to, a root in the system pool.
func isPublic(ca *x509.Certificate, sys *x509.CertPool, now time.Time) bool {
	if now.After(ca.NotAfter) || now.Before(ca.NotBefore) {
		now = ca.NotBefore.Add(time.Second) // judge the chain, not the dates
	}
	_, err := ca.Verify(x509.VerifyOptions{Roots: sys, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// 6. upstream link

func checkUpstreamLink(ctx context.Context, cfg config.Config, o Options) Result {
	t, err := cfg.Upstream.Target()
	if err != nil {
		return result(Fail, "%v", err)
	}
	host, _, _ := net.SplitHostPort(t.Address)
	switch {
	case t.Network == "unix":
		return result(Pass, "unix socket %s: not encrypted, but local", t.Address)
	case !t.TLS && config.IsLoopbackHost(host):
		return result(Pass, "plain TCP to loopback %s: not encrypted, but local", t.Address)
	case !t.TLS:
		return result(Fail, "plain TCP to %s: commands, replies and the password cross the network unencrypted; use rediss:// or a loopback/unix socket", t.Address)
	}
	tc, err := tlsconf.ClientConfig(cfg.Upstream.TLS, t.Address)
	if err != nil {
		return result(Fail, "rediss://%s: %v", t.Address, err)
	}
	roots := "the system roots"
	if cfg.Upstream.TLS.CAFile != "" {
		roots = "upstream.tls.ca_file"
	}
	if o.Offline {
		return result(Pass, "rediss://%s: TLS, certificate for %q verified against %s (handshake not tried: --offline)", t.Address, tc.ServerName, roots)
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Upstream.DialTimeout)
	defer cancel()
	d := tls.Dialer{Config: tc}
	c, err := d.DialContext(dctx, "tcp", t.Address)
	if err != nil {
		return result(Fail, "rediss://%s: TLS handshake failed: %v", t.Address, err)
	}
	defer c.Close()
	st := c.(*tls.Conn).ConnectionState()
	issuer := ""
	if len(st.PeerCertificates) > 0 {
		issuer = fmt.Sprintf(", issued by %q", st.PeerCertificates[0].Issuer.CommonName)
	}
	return result(Pass, "rediss://%s: %s handshake OK, certificate for %q verified against %s%s", t.Address, tls.VersionName(st.Version), tc.ServerName, roots, issuer)
}

// 7. Redis reachable (online)

func checkRedisReachable(ctx context.Context, cfg config.Config, _ Options) Result {
	opts, t, err := upstream.OptionsFor(cfg)
	if err != nil {
		return result(Fail, "%v", err)
	}
	// The proxy's own dial: connect, TLS, AUTH/SELECT as configured.
	uc, err := upstream.Dial(ctx, &opts, 2, t.DB)
	if err != nil {
		return result(Fail, "cannot connect to %s: %v", t, err)
	}
	defer uc.Close()
	reply, err := uc.Command("PING")
	if err != nil {
		return result(Fail, "PING %s: %v", t, err)
	}
	if string(reply) != "+PONG\r\n" {
		return result(Fail, "PING %s: unexpected reply %q", t, bytes.TrimSpace(reply))
	}
	auth := "without credentials"
	if opts.Password != "" || opts.Username != "" {
		auth = "with the configured credentials"
	}
	return result(Pass, "%s answers PING %s", t, auth)
}

// 8. Redis not reachable without the proxy (online)

// bindExposure says why a Redis bind setting makes it reachable from other
// hosts ("" when it binds to loopback addresses only).
func bindExposure(bind string) string {
	fields := strings.Fields(bind)
	if len(fields) == 0 {
		return "bind is empty: Redis listens on every interface"
	}
	var open []string
	for _, f := range fields {
		a := strings.TrimPrefix(f, "-")
		switch {
		case a == "*" || a == "::*" || a == "0.0.0.0" || a == "::":
			open = append(open, f+" (every interface)")
		case !config.IsLoopbackHost(a):
			open = append(open, f)
		}
	}
	if len(open) == 0 {
		return ""
	}
	return fmt.Sprintf("bind %q listens on %s", bind, strings.Join(open, ", "))
}

// addressExposure warns about a Redis at a network address: whoever can
// reach that address can reach Redis without the proxy.
func addressExposure(network, address string) string {
	if host, _, _ := net.SplitHostPort(address); network == "tcp" && !config.IsLoopbackHost(host) {
		return fmt.Sprintf("Redis is at the network address %s: hosts that can reach it bypass the proxy; firewall it so only the proxy connects", address)
	}
	return ""
}

func checkRedisExposure(ctx context.Context, cfg config.Config, _ Options) Result {
	opts, t, err := upstream.OptionsFor(cfg)
	if err != nil {
		return result(Fail, "%v", err)
	}
	var v verdict
	if w := addressExposure(t.Network, t.Address); w != "" {
		v.warn("%s", w)
	}
	uc, err := upstream.Dial(ctx, &opts, 2, t.DB)
	if err != nil {
		v.warn("could not check Redis's bind setting: %v", err)
		return v.result()
	}
	defer uc.Close()
	get := func(name string) (string, error) {
		reply, err := uc.Command("CONFIG", "GET", name)
		if err != nil {
			return "", err
		}
		return configValue(reply)
	}
	bind, err := get("bind")
	if err != nil {
		v.warn("could not check Redis's bind setting (CONFIG GET bind: %v)", err)
		return v.result()
	}
	port, _ := get("port")
	pm, err := get("protected-mode")
	if err != nil {
		pm = "unknown"
	}
	switch why := bindExposure(bind); {
	case port == "0":
		v.pass("Redis has no TCP port (port 0): unix socket only")
	case why != "":
		v.warn("%s: other hosts may connect to Redis directly (protected-mode %s)", why, pm)
	default:
		v.pass("Redis binds to loopback only (bind %q, protected-mode %s)", bind, pm)
	}
	return v.result()
}

// 9. secrets' file modes

func checkSecretModes(_ context.Context, cfg config.Config, _ Options) Result {
	files := []struct{ key, path string }{
		{"listen.tls.key_file", cfg.Listen.TLS.KeyFile},
		{"upstream.tls.key_file", cfg.Upstream.TLS.KeyFile},
		{"admin.tls.key_file", cfg.Admin.TLS.KeyFile},
		{"upstream.password_file", cfg.Upstream.PasswordFile},
	}
	var v verdict
	var checked []string
	for _, f := range files {
		if f.path == "" {
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil {
			v.warn("%s: %v", f.key, err)
			continue
		}
		if m := st.Mode().Perm(); m&0o077 != 0 {
			v.warn("%s %q has mode %04o: group/others can access it; chmod 600", f.key, f.path, m)
			continue
		}
		checked = append(checked, f.key)
	}
	v.pass("%s not accessible by group/others", strings.Join(checked, ", "))
	return v.result()
}

// 10. admin endpoint

func checkAdmin(_ context.Context, cfg config.Config, _ Options) Result {
	a := cfg.Admin
	if a.Address == "" {
		return result(Pass, "disabled (admin.address is empty)")
	}
	host, _, _ := net.SplitHostPort(a.Address)
	switch {
	case config.IsLoopbackHost(host):
		return result(Pass, "on loopback %s", a.Address)
	case a.TLS.CertFile != "" && a.TLS.ClientCAFile != "":
		return result(Pass, "%s is not loopback, but serves HTTPS and requires client certificates", a.Address)
	case a.TLS.CertFile != "":
		return result(Warn, "%s is not loopback and serves HTTPS without client certificates: anyone who reaches it sees /status and /metrics; set admin.tls.client_ca_file", a.Address)
	}
	// A warning, not a failure: in a container the endpoint must listen on
	// 0.0.0.0 and is published on the host's loopback only (deploy/compose),
	// which the proxy cannot see.
	return result(Warn, "%s is not loopback and serves plain HTTP: bind it to 127.0.0.1, publish it on loopback only (containers), firewall it, or set admin.tls with client_ca_file", a.Address)
}

// configValue is the value in CONFIG GET's reply (RESP2: an array of the
// name and the value), or the error Redis answered.
func configValue(reply []byte) (string, error) {
	if len(reply) > 0 && reply[0] == '-' {
		return "", errors.New(string(bytes.TrimSpace(reply[1:])))
	}
	lines := strings.Split(string(reply), "\r\n")
	// *2, $len, name, $len, value, "" (after the last CRLF)
	if len(lines) != 6 || lines[0] != "*2" {
		return "", fmt.Errorf("unexpected reply %q", reply)
	}
	return lines[4], nil
}
