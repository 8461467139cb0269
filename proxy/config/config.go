// Package config builds tlsproxy's typed configuration from a YAML file, defaults and
// TLSPROXY_* environment variables, and validates it before anything starts.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/viper"
)

// EnvPrefix is the prefix of the environment variables that override config keys:
// upstream.pool.max_size is set by TLSPROXY_UPSTREAM_POOL_MAX_SIZE.
const EnvPrefix = "TLSPROXY"

// Config is the whole proxy configuration. Build it with Load (or Default for tests)
// and treat it as read-only afterwards.
type Config struct {
	Listen   Listen   `mapstructure:"listen"`
	Upstream Upstream `mapstructure:"upstream"`
	Admin    Admin    `mapstructure:"admin"`
	Limits   Limits   `mapstructure:"limits"`
	TLS      TLS      `mapstructure:"tls"`
	Log      Log      `mapstructure:"log"`
	// ShutdownTimeout bounds the drain after SIGTERM/SIGINT: in-flight
	// commands finish and their replies reach the clients, then every
	// connection is closed, within this time.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout"`
}

// Admin is the HTTP endpoint for operators: /metrics, /healthz, /readyz,
// /status and a status page at /.
type Admin struct {
	// Address is host:port; empty disables the endpoint. An address that is
	// not loopback is allowed, with a start-up warning.
	Address string   `mapstructure:"address"`
	TLS     AdminTLS `mapstructure:"tls"`
}

// AdminTLS serves the admin endpoint over HTTPS when CertFile is set, and
// requires client certificates from ClientCAFile when that is set too.
type AdminTLS struct {
	CertFile     string `mapstructure:"cert_file"`
	KeyFile      string `mapstructure:"key_file"`
	ClientCAFile string `mapstructure:"client_ca_file"`
}

// TLS is the certificate lifecycle: reloading and expiry monitoring.
type TLS struct {
	// ReloadInterval reloads the certificates, keys, CA bundles and the
	// password file this often (0: only on SIGHUP and when the files change).
	ReloadInterval time.Duration `mapstructure:"reload_interval"`
	// ExpiryWarning is the window before a certificate's expiry in which it
	// is reported as due for rotation.
	ExpiryWarning time.Duration `mapstructure:"expiry_warning"`
}

// Limits bound what clients can take.
type Limits struct {
	// MaxClients is the most client connections at once; the next one gets
	// Redis's "-ERR max number of clients reached" and is closed.
	MaxClients int `mapstructure:"max_clients"`
	// IdleTimeout closes a client idle that long (0: never), as Redis's
	// timeout does: subscribers, MONITOR, replicas and blocked clients are exempt.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// ClientOutputBuffer is the most reply bytes the proxy holds for a
	// client that does not read them; past it the client is disconnected.
	ClientOutputBuffer int `mapstructure:"client_output_buffer"`
}

// Listen is the client-facing side: where the proxy accepts mutual-TLS connections.
type Listen struct {
	// Address is the host:port the proxy listens on.
	Address string `mapstructure:"address"`
	// HandshakeTimeout bounds a client's TLS handshake, so idle or slow peers cannot hold sockets.
	HandshakeTimeout time.Duration `mapstructure:"handshake_timeout"`
	// MaxRequestBytes is the largest incomplete request buffered per client; more is a protocol error.
	MaxRequestBytes int       `mapstructure:"max_request_bytes"`
	TLS             ListenTLS `mapstructure:"tls"`
}

// ListenTLS is the server certificate and the client-certificate policy.
type ListenTLS struct {
	CertFile     string `mapstructure:"cert_file"`
	KeyFile      string `mapstructure:"key_file"`
	ClientCAFile string `mapstructure:"client_ca_file"`
	// ClientAuth is "require" (mutual TLS), "verify-if-given" or "none".
	ClientAuth string `mapstructure:"client_auth"`
	// MinVersion is the lowest TLS version accepted: "1.2" or "1.3".
	MinVersion string `mapstructure:"min_version"`
	// CipherSuites are the TLS 1.2 suites accepted, by Go's names (TLS 1.3's
	// are fixed and all AEAD). The default is ECDHE key exchange with AEAD
	// ciphers only: Go's own TLS 1.2 defaults still accept CBC-SHA1 suites.
	CipherSuites []string `mapstructure:"cipher_suites"`
}

// DefaultCipherSuites: ECDHE key exchange (forward secrecy) and AEAD ciphers.
var DefaultCipherSuites = []string{
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}

// Upstream is the Redis the proxy forwards to.
type Upstream struct {
	// URL is redis://[user:pass@]host:port[/db], rediss://... (TLS) or unix:///path.sock[?db=N].
	URL string `mapstructure:"url"`
	// PasswordFile holds the Redis password (trailing newline trimmed), instead of the URL.
	PasswordFile string        `mapstructure:"password_file"`
	TLS          UpstreamTLS   `mapstructure:"tls"`
	DialTimeout  time.Duration `mapstructure:"dial_timeout"`
	// ReadTimeout bounds the wait for a reply on a shared connection; 0, the
	// default, waits as long as Redis takes, as a direct client would (a
	// CLIENT PAUSE, FAILOVER or slow script must not fail other clients).
	ReadTimeout  time.Duration `mapstructure:"read_timeout"`
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	Pool         Pool          `mapstructure:"pool"`
}

// UpstreamTLS configures TLS to Redis; it is used only with a rediss:// URL.
type UpstreamTLS struct {
	// CAFile verifies Redis's certificate; empty means the system roots.
	CAFile string `mapstructure:"ca_file"`
	// ServerName is the name checked in Redis's certificate; empty means the URL's host.
	ServerName string `mapstructure:"server_name"`
	// CertFile and KeyFile are an optional client certificate presented to Redis.
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
}

// Pool sizes the upstream connections.
type Pool struct {
	// MaxSize is the number of shared, multiplexed connections per upstream pool.
	MaxSize int `mapstructure:"max_size"`
	// MinIdle is the number of idle connections kept ready for pinned sessions.
	MinIdle int `mapstructure:"min_idle"`
	// MaxIdle is the number of idle connections kept after pinned sessions end.
	MaxIdle int `mapstructure:"max_idle"`
	// MaxPinned bounds the dedicated (pinned) upstream connections open at once.
	MaxPinned int `mapstructure:"max_pinned"`
}

// Log configures the proxy's own log output.
type Log struct {
	// Level is one of trace, debug, info, warn, error.
	Level string `mapstructure:"level"`
	// Format is "json" (one object per line) or "console" (human-readable).
	Format string `mapstructure:"format"`
}

// Enumerated values accepted by Validate, in the order error messages list them.
var (
	ClientAuthModes = []string{"require", "verify-if-given", "none"}
	TLSVersions     = []string{"1.2", "1.3"}
	LogLevels       = []string{"trace", "debug", "info", "warn", "error"}
	LogFormats      = []string{"json", "console"}
)

// Default returns the configuration used for every key that the file and the
// environment leave unset. File paths are empty: they have no sensible default.
func Default() Config {
	return Config{
		Listen: Listen{
			Address:          "127.0.0.1:6380",
			HandshakeTimeout: 5 * time.Second,
			MaxRequestBytes:  512 << 20,
			TLS:              ListenTLS{ClientAuth: "require", MinVersion: "1.2", CipherSuites: DefaultCipherSuites},
		},
		Upstream: Upstream{
			URL:          "redis://127.0.0.1:6379",
			DialTimeout:  5 * time.Second,
			ReadTimeout:  0,
			WriteTimeout: 10 * time.Second,
			Pool:         Pool{MaxSize: 2, MinIdle: 1, MaxIdle: 16, MaxPinned: 256},
		},
		Admin:           Admin{Address: "127.0.0.1:9180"},
		Limits:          Limits{MaxClients: 10000, ClientOutputBuffer: 512 << 20},
		TLS:             TLS{ExpiryWarning: 90 * 24 * time.Hour},
		Log:             Log{Level: "info", Format: "json"},
		ShutdownTimeout: 15 * time.Second,
	}
}

// Load reads the YAML file at path (or nothing when path is ""), applies defaults and
// TLSPROXY_* environment overrides, and validates the result. Unknown keys in the
// file are an error, so a typo never silently falls back to a default.
func Load(path string) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	for _, s := range settings(Default()) {
		// A default for every key is what lets AutomaticEnv override every key.
		v.SetDefault(s.key, s.value)
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	if path != "" {
		v.SetConfigFile(path)
		if err := v.ReadInConfig(); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return Config{}, fmt.Errorf("config file %q does not exist: check --config, or omit it to use defaults and %s_* environment variables", path, EnvPrefix)
			}
			return Config{}, fmt.Errorf("read config file %q: %w", path, err)
		}
		if err := checkKeys(v.AllKeys()); err != nil {
			return Config{}, fmt.Errorf("config file %q: %w", path, err)
		}
		if err := checkDurations(v.Get); err != nil {
			return Config{}, fmt.Errorf("config file %q: %w", path, err)
		}
	}
	if err := checkEnv(os.Environ()); err != nil {
		return Config{}, err
	}

	var c Config
	if err := v.Unmarshal(&c); err != nil {
		return Config{}, fmt.Errorf("decode config (file %q and %s_* environment variables): %w", path, EnvPrefix, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// checkDurations refuses a duration written as a bare number: YAML's
// `read_timeout: 10` would be 10 nanoseconds (the environment form is
// refused by the decoder already).
func checkDurations(get func(string) any) error {
	var errs []error
	for _, s := range settings(Default()) {
		if _, ok := s.value.(time.Duration); !ok {
			continue
		}
		switch n := get(s.key).(type) {
		case int, int64, uint64, float64:
			if fmt.Sprint(n) != "0" {
				errs = append(errs, fmt.Errorf("%s: %v is a number without a unit: write a duration such as %vs or %vms", s.key, n, n, n))
			}
		}
	}
	return errors.Join(errs...)
}

// checkEnv refuses a TLSPROXY_* variable that names no key, as a misspelt
// key in the file is refused. (The tests' own switches are named otherwise:
// REQUIRE_TEST_TOOLS, PROXY_TEST_LOG.)
func checkEnv(environ []string) error {
	known := map[string]bool{}
	for _, k := range Keys() {
		known[EnvVar(k)] = true
	}
	var errs []error
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix+"_") || known[name] {
			continue
		}
		msg := fmt.Sprintf("environment variable %s names no config key", name)
		key := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, EnvPrefix+"_"), "_", "."))
		if k := closestEnvKey(name); k != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", EnvVar(k))
		} else if k := closestKey(key); k != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", EnvVar(k))
		}
		errs = append(errs, errors.New(msg))
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}

func closestEnvKey(name string) string {
	best, bestDist := "", 3
	for _, k := range Keys() {
		if d := editDistance(name, EnvVar(k)); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// checkKeys reports every key that is not a known setting. Defaults cover all known
// keys, so anything else in keys came from the file.
func checkKeys(keys []string) error {
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, s := range settings(Default()) {
		known[s.key] = true
		for i, r := range s.key {
			if r == '.' {
				sections[s.key[:i]] = true
			}
		}
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		switch {
		case known[k]:
		case sections[k]:
			errs = append(errs, fmt.Errorf("%s: is a section: give it keys (e.g. %s) or remove it", k, firstKeyUnder(k)))
		default:
			msg := fmt.Sprintf("%s: unknown key", k)
			if s := closestKey(k); s != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", s)
			}
			errs = append(errs, errors.New(msg))
		}
	}
	return errors.Join(errs...)
}

func firstKeyUnder(section string) string {
	for _, s := range settings(Default()) {
		if strings.HasPrefix(s.key, section+".") {
			return s.key
		}
	}
	return section
}

// closestKey suggests the known key nearest to a misspelt one (at most 2 edits away).
func closestKey(key string) string {
	best, bestDist := "", 3
	for _, s := range settings(Default()) {
		if d := editDistance(key, s.key); d < bestDist {
			best, bestDist = s.key, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// setting is one leaf key of Config, e.g. "upstream.pool.max_size", with its value.
type setting struct {
	key   string
	value any
}

// settings flattens c into its leaf keys, following the mapstructure tags, so the
// list of known keys (and their env variables) is derived from the struct itself.
func settings(c Config) []setting {
	var out []setting
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			key := t.Field(i).Tag.Get("mapstructure")
			if prefix != "" {
				key = prefix + "." + key
			}
			if f := v.Field(i); f.Kind() == reflect.Struct {
				walk(key, f)
			} else {
				out = append(out, setting{key, f.Interface()})
			}
		}
	}
	walk("", reflect.ValueOf(c))
	return out
}

// Changed returns the keys whose values differ between a and b, in
// declaration order.
func Changed(a, b Config) []string {
	var out []string
	sb := settings(b)
	for i, s := range settings(a) {
		if !reflect.DeepEqual(s.value, sb[i].value) {
			out = append(out, s.key)
		}
	}
	return out
}

// Keys returns every config key in declaration order, e.g. "listen.tls.cert_file".
func Keys() []string {
	var keys []string
	for _, s := range settings(Default()) {
		keys = append(keys, s.key)
	}
	return keys
}

// EnvVar returns the environment variable that overrides key,
// e.g. TLSPROXY_LISTEN_TLS_CERT_FILE for listen.tls.cert_file.
func EnvVar(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// Validate checks every setting and returns all problems at once, each naming its key.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	oneOf := func(key, value string, allowed []string) {
		if !slices.Contains(allowed, value) {
			add(key, "%q is not one of %s", value, strings.Join(allowed, ", "))
		}
	}
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			add(key, "must be a positive duration such as 5s, got %s", d)
		}
	}
	notNegative := func(key string, d time.Duration) {
		if d < 0 {
			add(key, "must be 0 (no limit) or a positive duration such as 30s, got %s", d)
		}
	}

	l := c.Listen
	if l.Address == "" {
		add("listen.address", "must not be empty; use host:port such as 127.0.0.1:6380")
	} else if _, _, err := net.SplitHostPort(l.Address); err != nil {
		add("listen.address", "%q is not host:port: %v", l.Address, err)
	}
	positive("listen.handshake_timeout", l.HandshakeTimeout)
	if l.MaxRequestBytes <= 0 {
		add("listen.max_request_bytes", "must be at least 1, got %d", l.MaxRequestBytes)
	}
	oneOf("listen.tls.client_auth", l.TLS.ClientAuth, ClientAuthModes)
	oneOf("listen.tls.min_version", l.TLS.MinVersion, TLSVersions)
	if len(l.TLS.CipherSuites) == 0 {
		add("listen.tls.cipher_suites", "must name at least one TLS 1.2 suite")
	}
	for _, name := range l.TLS.CipherSuites {
		if err := checkCipherSuite(name); err != nil {
			add("listen.tls.cipher_suites", "%v", err)
		}
	}
	required := func(key, value, what string) {
		if value == "" {
			add(key, "is required (in the config file or %s): %s", EnvVar(key), what)
		}
	}
	required("listen.tls.cert_file", l.TLS.CertFile, "the proxy's server certificate (PEM); `tlsproxy certs dev` writes one for development")
	required("listen.tls.key_file", l.TLS.KeyFile, "the private key (PEM) of listen.tls.cert_file")
	if l.TLS.ClientAuth == "require" || l.TLS.ClientAuth == "verify-if-given" {
		required("listen.tls.client_ca_file", l.TLS.ClientCAFile,
			fmt.Sprintf("the CA (PEM) that signs client certificates, needed when listen.tls.client_auth is %q", l.TLS.ClientAuth))
	}

	u := c.Upstream
	positive("upstream.dial_timeout", u.DialTimeout)
	notNegative("upstream.read_timeout", u.ReadTimeout)
	positive("upstream.write_timeout", u.WriteTimeout)
	if u.Pool.MaxSize < 1 {
		add("upstream.pool.max_size", "must be at least 1, got %d", u.Pool.MaxSize)
	}
	if u.Pool.MaxPinned < 1 {
		add("upstream.pool.max_pinned", "must be at least 1, got %d", u.Pool.MaxPinned)
	}
	if u.Pool.MinIdle < 0 {
		add("upstream.pool.min_idle", "must not be negative, got %d", u.Pool.MinIdle)
	}
	if u.Pool.MaxIdle < u.Pool.MinIdle {
		add("upstream.pool.max_idle", "%d is less than upstream.pool.min_idle (%d)", u.Pool.MaxIdle, u.Pool.MinIdle)
	}
	if (u.TLS.CertFile == "") != (u.TLS.KeyFile == "") {
		add("upstream.tls.cert_file", "and upstream.tls.key_file must be set together (client certificate for Redis)")
	}
	target, err := u.Target()
	if err != nil {
		errs = append(errs, err)
	} else if !target.TLS {
		for key, value := range map[string]string{
			"upstream.tls.ca_file": u.TLS.CAFile, "upstream.tls.server_name": u.TLS.ServerName,
			"upstream.tls.cert_file": u.TLS.CertFile, "upstream.tls.key_file": u.TLS.KeyFile,
		} {
			if value != "" {
				// Refuse rather than ignore: the operator clearly expects TLS to Redis.
				add(key, "is set but upstream.url is not rediss://, so the connection to Redis would not be encrypted; use a rediss:// URL or remove upstream.tls")
			}
		}
	}

	a := c.Admin
	if a.Address != "" {
		if _, _, err := net.SplitHostPort(a.Address); err != nil {
			add("admin.address", "%q is not host:port (or empty, to disable the admin endpoint): %v", a.Address, err)
		}
	}
	if (a.TLS.CertFile == "") != (a.TLS.KeyFile == "") {
		add("admin.tls.cert_file", "and admin.tls.key_file must be set together (HTTPS for the admin endpoint)")
	}
	if a.TLS.ClientCAFile != "" && a.TLS.CertFile == "" {
		add("admin.tls.client_ca_file", "needs admin.tls.cert_file and admin.tls.key_file: client certificates are asked for over HTTPS only")
	}
	lim := c.Limits
	if lim.MaxClients < 1 {
		add("limits.max_clients", "must be at least 1, got %d", lim.MaxClients)
	}
	notNegative("limits.idle_timeout", lim.IdleTimeout)
	if lim.ClientOutputBuffer < 1<<20 {
		add("limits.client_output_buffer", "must be at least 1048576 (1 MiB, in bytes), got %d", lim.ClientOutputBuffer)
	}
	positive("shutdown_timeout", c.ShutdownTimeout)
	notNegative("tls.reload_interval", c.TLS.ReloadInterval)
	positive("tls.expiry_warning", c.TLS.ExpiryWarning)

	oneOf("log.level", c.Log.Level, LogLevels)
	oneOf("log.format", c.Log.Format, LogFormats)

	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}
