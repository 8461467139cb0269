package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clearEnv blanks every TLSPROXY_* override so the caller's environment cannot leak
// into a test (viper ignores empty variables).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range Keys() {
		t.Setenv(EnvVar(k), "")
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// valid returns Default() with the file paths that Validate requires.
func valid() Config {
	c := Default()
	c.Listen.TLS.CertFile = "server.crt"
	c.Listen.TLS.KeyFile = "server.key"
	c.Listen.TLS.ClientCAFile = "ca.crt"
	return c
}

func TestDefault(t *testing.T) {
	c := Default()
	if c.Listen.Address != "127.0.0.1:6380" || c.Listen.HandshakeTimeout != 5*time.Second ||
		c.Listen.MaxRequestBytes != 536870912 || c.Listen.TLS.ClientAuth != "require" ||
		c.Listen.TLS.MinVersion != "1.2" || c.Upstream.URL != "redis://127.0.0.1:6379" ||
		c.Upstream.DialTimeout != 5*time.Second || c.Upstream.ReadTimeout != 0 ||
		c.Upstream.WriteTimeout != 10*time.Second ||
		c.Upstream.Pool != (Pool{MaxSize: 2, MinIdle: 1, MaxIdle: 16, MaxPinned: 256}) ||
		c.Log != (Log{Level: "info", Format: "json"}) ||
		c.Admin != (Admin{Address: "127.0.0.1:9180"}) || c.ShutdownTimeout != 15*time.Second ||
		c.Limits != (Limits{MaxClients: 10000, ClientOutputBuffer: 512 << 20}) ||
		c.TLS != (TLS{ExpiryWarning: 2160 * time.Hour}) {
		t.Errorf("unexpected defaults: %+v", c)
	}
	if err := valid().Validate(); err != nil {
		t.Errorf("defaults plus cert paths should validate: %v", err)
	}
	if len(Keys()) != 34 {
		t.Errorf("Keys() = %d keys, want 34: %v", len(Keys()), Keys())
	}
	if got := EnvVar("listen.tls.cert_file"); got != "TLSPROXY_LISTEN_TLS_CERT_FILE" {
		t.Errorf("EnvVar = %q", got)
	}
}

func TestLoadYAML(t *testing.T) {
	clearEnv(t)
	p := writeFile(t, "tlsproxy.yaml", `
listen:
  address: 127.0.0.1:7000
  handshake_timeout: 2s
  max_request_bytes: 1048576
  tls:
    cert_file: /etc/tlsproxy/server.crt
    key_file: /etc/tlsproxy/server.key
    client_ca_file: /etc/tlsproxy/ca.crt
    client_auth: verify-if-given
    min_version: "1.3"
upstream:
  url: unix:///tmp/redis.sock?db=1
  read_timeout: 1m
  pool:
    max_size: 4
    max_pinned: 10
log:
  level: debug
  format: console
`)
	got, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Listen.Address = "127.0.0.1:7000"
	want.Listen.HandshakeTimeout = 2 * time.Second
	want.Listen.MaxRequestBytes = 1 << 20
	want.Listen.TLS = ListenTLS{CertFile: "/etc/tlsproxy/server.crt", KeyFile: "/etc/tlsproxy/server.key",
		ClientCAFile: "/etc/tlsproxy/ca.crt", ClientAuth: "verify-if-given", MinVersion: "1.3", CipherSuites: DefaultCipherSuites}
	want.Upstream.URL = "unix:///tmp/redis.sock?db=1"
	want.Upstream.ReadTimeout = time.Minute
	want.Upstream.Pool.MaxSize = 4
	want.Upstream.Pool.MaxPinned = 10
	want.Log = Log{Level: "debug", Format: "console"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", got, want)
	}
}

func TestLoadEnvOverride(t *testing.T) {
	clearEnv(t)
	t.Setenv("TLSPROXY_LISTEN_TLS_CERT_FILE", "/env/server.crt")
	t.Setenv("TLSPROXY_LISTEN_TLS_KEY_FILE", "/env/server.key")
	t.Setenv("TLSPROXY_LISTEN_TLS_CLIENT_CA_FILE", "/env/ca.crt")
	t.Setenv("TLSPROXY_UPSTREAM_URL", "rediss://127.0.0.1:6390/3")
	t.Setenv("TLSPROXY_UPSTREAM_POOL_MAX_SIZE", "3")
	t.Setenv("TLSPROXY_UPSTREAM_DIAL_TIMEOUT", "250ms")
	t.Setenv("TLSPROXY_LOG_LEVEL", "warn")

	check := func(t *testing.T, c Config) {
		t.Helper()
		if c.Listen.TLS.CertFile != "/env/server.crt" || c.Listen.TLS.KeyFile != "/env/server.key" ||
			c.Listen.TLS.ClientCAFile != "/env/ca.crt" || c.Upstream.URL != "rediss://127.0.0.1:6390/3" ||
			c.Upstream.Pool.MaxSize != 3 || c.Upstream.DialTimeout != 250*time.Millisecond || c.Log.Level != "warn" {
			t.Errorf("env not applied: %+v", c)
		}
	}
	t.Run("no file", func(t *testing.T) {
		c, err := Load("")
		if err != nil {
			t.Fatal(err)
		}
		check(t, c)
		if c.Listen.Address != "127.0.0.1:6380" {
			t.Errorf("default lost: %q", c.Listen.Address)
		}
	})
	t.Run("env beats file", func(t *testing.T) {
		p := writeFile(t, "c.yaml", "upstream:\n  url: redis://127.0.0.1:1\n  pool:\n    max_size: 9\nlog:\n  level: error\n")
		c, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		check(t, c)
	})
	t.Run("bad int", func(t *testing.T) {
		t.Setenv("TLSPROXY_UPSTREAM_POOL_MAX_SIZE", "many")
		_, err := Load("")
		if err == nil || !strings.Contains(err.Error(), "max_size") {
			t.Errorf("want error naming max_size, got %v", err)
		}
	})
}

func TestLoadErrors(t *testing.T) {
	clearEnv(t)
	certs := "listen:\n  tls:\n    cert_file: s.crt\n    key_file: s.key\n    client_ca_file: ca.crt\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", "listen:\n  tls:\n    cert_fil: s.crt\n", []string{"listen.tls.cert_fil: unknown key", "did you mean listen.tls.cert_file?"}},
		{"unknown top-level", certs + "upstreams:\n  url: redis://x\n", []string{"upstreams.url: unknown key"}},
		{"section as value", certs + "log: debug\n", []string{"log: is a section"}},
		{"bad yaml", "listen: [\n", []string{"read config file"}},
		{"bad enum", certs + "    client_auth: maybe\n", []string{`listen.tls.client_auth: "maybe" is not one of require, verify-if-given, none`}},
		{"bad duration", certs + "upstream:\n  dial_timeout: soon\n", []string{"dial_timeout"}},
		{"missing certs", "log:\n  level: info\n", []string{"listen.tls.cert_file: is required", "listen.tls.key_file: is required", "listen.tls.client_ca_file: is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, "c.yaml", tt.yaml)
			_, err := Load(p)
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nope.yaml")
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("want error naming %s, got %v", p, err)
		}
	})
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"client_auth none without CA", func(c *Config) { c.Listen.TLS.ClientAuth = "none"; c.Listen.TLS.ClientCAFile = "" }, ""},
		{"verify-if-given needs CA", func(c *Config) { c.Listen.TLS.ClientAuth = "verify-if-given"; c.Listen.TLS.ClientCAFile = "" }, "listen.tls.client_ca_file: is required"},
		{"empty address", func(c *Config) { c.Listen.Address = "" }, "listen.address: must not be empty"},
		{"address without port", func(c *Config) { c.Listen.Address = "127.0.0.1" }, "listen.address:"},
		{"bad client_auth", func(c *Config) { c.Listen.TLS.ClientAuth = "maybe" }, `listen.tls.client_auth: "maybe" is not one of require, verify-if-given, none`},
		{"bad min_version", func(c *Config) { c.Listen.TLS.MinVersion = "1.1" }, `listen.tls.min_version: "1.1" is not one of 1.2, 1.3`},
		{"bad log level", func(c *Config) { c.Log.Level = "loud" }, `log.level: "loud" is not one of`},
		{"bad log format", func(c *Config) { c.Log.Format = "xml" }, `log.format: "xml" is not one of json, console`},
		{"zero handshake timeout", func(c *Config) { c.Listen.HandshakeTimeout = 0 }, "listen.handshake_timeout: must be a positive duration"},
		{"negative read timeout", func(c *Config) { c.Upstream.ReadTimeout = -time.Second }, "upstream.read_timeout:"},
		{"zero dial timeout", func(c *Config) { c.Upstream.DialTimeout = 0 }, "upstream.dial_timeout:"},
		{"zero write timeout", func(c *Config) { c.Upstream.WriteTimeout = 0 }, "upstream.write_timeout:"},
		{"zero max request", func(c *Config) { c.Listen.MaxRequestBytes = 0 }, "listen.max_request_bytes:"},
		{"max_size 0", func(c *Config) { c.Upstream.Pool.MaxSize = 0 }, "upstream.pool.max_size: must be at least 1"},
		{"max_pinned 0", func(c *Config) { c.Upstream.Pool.MaxPinned = 0 }, "upstream.pool.max_pinned: must be at least 1"},
		{"min_idle negative", func(c *Config) { c.Upstream.Pool.MinIdle = -1 }, "upstream.pool.min_idle: must not be negative"},
		{"max_idle below min_idle", func(c *Config) { c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle = 4, 2 }, "upstream.pool.max_idle: 2 is less than upstream.pool.min_idle (4)"},
		{"max_idle zero min_idle zero", func(c *Config) { c.Upstream.Pool.MinIdle, c.Upstream.Pool.MaxIdle = 0, 0 }, ""},
		{"bad url", func(c *Config) { c.Upstream.URL = "http://127.0.0.1" }, `upstream.url: http://127.0.0.1: scheme "http" is not one of redis, rediss, unix`},
		{"upstream tls without rediss", func(c *Config) { c.Upstream.TLS.CAFile = "ca.crt" }, "upstream.tls.ca_file: is set but upstream.url is not rediss://"},
		{"upstream tls with rediss", func(c *Config) { c.Upstream.URL = "rediss://127.0.0.1"; c.Upstream.TLS.CAFile = "ca.crt" }, ""},
		{"upstream client cert without key", func(c *Config) { c.Upstream.URL = "rediss://127.0.0.1"; c.Upstream.TLS.CertFile = "c.crt" }, "upstream.tls.cert_file: and upstream.tls.key_file must be set together"},
		{"admin disabled", func(c *Config) { c.Admin.Address = "" }, ""},
		{"admin address without port", func(c *Config) { c.Admin.Address = "localhost" }, "admin.address:"},
		{"admin cert without key", func(c *Config) { c.Admin.TLS.CertFile = "a.crt" }, "admin.tls.cert_file: and admin.tls.key_file must be set together"},
		{"admin client CA without cert", func(c *Config) { c.Admin.TLS.ClientCAFile = "ca.crt" }, "admin.tls.client_ca_file: needs admin.tls.cert_file"},
		{"max_clients 0", func(c *Config) { c.Limits.MaxClients = 0 }, "limits.max_clients: must be at least 1"},
		{"negative idle timeout", func(c *Config) { c.Limits.IdleTimeout = -time.Second }, "limits.idle_timeout:"},
		{"tiny output buffer", func(c *Config) { c.Limits.ClientOutputBuffer = 1000 }, "limits.client_output_buffer: must be at least 1048576"},
		{"zero shutdown timeout", func(c *Config) { c.ShutdownTimeout = 0 }, "shutdown_timeout: must be a positive duration"},
		{"negative reload interval", func(c *Config) { c.TLS.ReloadInterval = -time.Second }, "tls.reload_interval:"},
		{"zero expiry warning", func(c *Config) { c.TLS.ExpiryWarning = 0 }, "tls.expiry_warning:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.modify(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && err == nil:
				t.Errorf("no error, want %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestTarget(t *testing.T) {
	tests := []struct {
		url     string
		want    Target
		wantErr string
	}{
		{"redis://127.0.0.1:6379", Target{Network: "tcp", Address: "127.0.0.1:6379"}, ""},
		{"redis://127.0.0.1", Target{Network: "tcp", Address: "127.0.0.1:6379"}, ""},
		{"redis://u:p@127.0.0.1:6379/2", Target{Network: "tcp", Address: "127.0.0.1:6379", Username: "u", Password: "p", DB: 2}, ""},
		{"redis://:p%40ss@127.0.0.1:6379/", Target{Network: "tcp", Address: "127.0.0.1:6379", Password: "p@ss"}, ""},
		{"redis://127.0.0.1:6379?db=5", Target{Network: "tcp", Address: "127.0.0.1:6379", DB: 5}, ""},
		{"rediss://127.0.0.1:6390", Target{Network: "tcp", Address: "127.0.0.1:6390", TLS: true}, ""},
		{"rediss://[::1]:6390/1", Target{Network: "tcp", Address: "[::1]:6390", TLS: true, DB: 1}, ""},
		{"unix:///tmp/r.sock", Target{Network: "unix", Address: "/tmp/r.sock"}, ""},
		{"unix:///tmp/r.sock?db=3", Target{Network: "unix", Address: "/tmp/r.sock", DB: 3}, ""},
		{"unix://app:pw@/tmp/r.sock?db=3", Target{Network: "unix", Address: "/tmp/r.sock", Username: "app", Password: "pw", DB: 3}, ""},
		{"", Target{}, "must not be empty"},
		{"127.0.0.1:6379", Target{}, "use e.g. redis://"},
		{"http://127.0.0.1", Target{}, `scheme "http" is not one of`},
		{"redis://127.0.0.1:6379/x", Target{}, `database "x" is not a non-negative integer`},
		{"redis://127.0.0.1:6379/-1", Target{}, "not a non-negative integer"},
		{"redis://127.0.0.1:6379/1?db=2", Target{}, "database given twice"},
		{"redis://127.0.0.1:99999", Target{}, "invalid port"},
		{"redis:///0", Target{}, "missing host"},
		{"unix://tmp/r.sock", Target{}, "absolute socket path"},
		{"unix:///tmp/r.sock?db=a", Target{}, "not a non-negative integer"},
		{"unix:///tmp/r.sock?timeout=1s", Target{}, `unknown query parameter "timeout"`},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, err := Upstream{URL: tt.url}.Target()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "upstream.url: ") {
					t.Errorf("error %v, want upstream.url: ...%q...", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTargetErrorsHidePassword(t *testing.T) {
	for _, u := range []string{
		"redis://user:hunter2@127.0.0.1:6379/x",
		"redis://user:hunter2@127.0.0.1:bad",
		"rediss://user:hunter2@127.0.0.1:6379?x=1",
		"ftp://user:hunter2@127.0.0.1",
		"redis://user:hunter2@127.0.0.1:6379/%zz",
	} {
		_, err := Upstream{URL: u}.Target()
		if err == nil {
			t.Errorf("%s: want error", u)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error leaks password: %v", err)
		}
	}
	tg, _ := Upstream{URL: "redis://u:hunter2@127.0.0.1"}.Target()
	if strings.Contains(tg.String(), "hunter2") {
		t.Errorf("Target.String leaks password: %s", tg)
	}
}

func TestTargetPasswordFile(t *testing.T) {
	pwFile := writeFile(t, "pw", "s3cret\n")
	crlf := writeFile(t, "pw-crlf", "s3cret\r\n")
	empty := writeFile(t, "pw-empty", "\n")
	missing := filepath.Join(t.TempDir(), "missing")

	tests := []struct {
		name, url, file string
		wantPW, wantErr string
	}{
		{"file", "redis://127.0.0.1:6379", pwFile, "s3cret", ""},
		{"file crlf", "redis://127.0.0.1:6379", crlf, "s3cret", ""},
		{"file with ACL user", "redis://app@127.0.0.1:6379", pwFile, "s3cret", ""},
		{"both", "redis://u:p@127.0.0.1:6379", pwFile, "", "upstream.password_file: is set but upstream.url already contains a password"},
		{"unreadable", "redis://127.0.0.1:6379", missing, "", "upstream.password_file: read " + `"` + missing + `"`},
		{"empty", "redis://127.0.0.1:6379", empty, "", "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Upstream{URL: tt.url, PasswordFile: tt.file}.Target()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Password != tt.wantPW {
				t.Errorf("password %q, want %q", got.Password, tt.wantPW)
			}
		})
	}
	t.Run("validate reports it", func(t *testing.T) {
		c := valid()
		c.Upstream.PasswordFile = missing
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "upstream.password_file") {
			t.Errorf("Validate: %v", err)
		}
	})
}

// TestExampleConfig keeps config.example.yaml loadable and equal to Default() apart
// from file paths, so the example cannot drift from the code.
func TestExampleConfig(t *testing.T) {
	clearEnv(t)
	c, err := Load("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.TLS.CertFile != "certs/dev/server.crt" || c.Listen.TLS.KeyFile != "certs/dev/server.key" ||
		c.Listen.TLS.ClientCAFile != "certs/dev/ca.crt" {
		t.Errorf("example should point at the dev certs: %+v", c.Listen.TLS)
	}
	c.Listen.TLS.CertFile, c.Listen.TLS.KeyFile, c.Listen.TLS.ClientCAFile = "", "", ""
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("config.example.yaml differs from Default():\n got %+v\nwant %+v", c, Default())
	}
	raw, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !strings.Contains(string(raw), leaf+":") {
			t.Errorf("config.example.yaml does not list %s", k)
		}
	}
}

// TestReadmeDocumentsEveryKey keeps the README's configuration table complete.
func TestReadmeDocumentsEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		if !strings.Contains(string(raw), "`"+k+"`") || !strings.Contains(string(raw), "`"+EnvVar(k)+"`") {
			t.Errorf("README.md does not document %s (%s)", k, EnvVar(k))
		}
	}
}

func TestChanged(t *testing.T) {
	a, b := valid(), valid()
	if got := Changed(a, b); len(got) != 0 {
		t.Fatalf("Changed(same) = %v", got)
	}
	b.Listen.TLS.CertFile, b.Limits.MaxClients, b.Upstream.Pool.MaxSize = "other.crt", 5, 9
	if got := strings.Join(Changed(a, b), " "); got != "listen.tls.cert_file upstream.pool.max_size limits.max_clients" {
		t.Fatalf("Changed = %s", got)
	}
}

// TestBareNumberDuration: `read_timeout: 10` would be 10ns: refused, naming
// the key; 0 (no limit) and durations with units are fine.
func TestBareNumberDuration(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"upstream:\n  read_timeout: 10\n", "upstream.read_timeout: 10 is a number without a unit"},
		{"shutdown_timeout: 1.5\n", "shutdown_timeout: 1.5 is a number without a unit"},
		{"upstream:\n  read_timeout: 0\n", ""},
		{"upstream:\n  read_timeout: 10s\n", ""},
	} {
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml+"listen:\n  tls:\n    cert_file: a\n    key_file: b\n    client_ca_file: c\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// TestMisspeltEnvironmentVariable: a TLSPROXY_* variable that names no key
// is an error, with a suggestion, like a misspelt key in the file.
func TestMisspeltEnvironmentVariable(t *testing.T) {
	err := checkEnv([]string{"TLSPROXY_UPSTREAM_URL=redis://x", "TLSPROXY_UPSTREM_URL=redis://y", "PATH=/bin"})
	if err == nil || !strings.Contains(err.Error(), "TLSPROXY_UPSTREM_URL names no config key (did you mean TLSPROXY_UPSTREAM_URL?)") {
		t.Fatalf("checkEnv = %v", err)
	}
	if err := checkEnv([]string{"TLSPROXY_LOG_LEVEL=debug"}); err != nil {
		t.Fatalf("a known variable: %v", err)
	}
}

func TestCipherSuites(t *testing.T) {
	for _, tc := range []struct {
		suites []string
		want   string
	}{
		{DefaultCipherSuites, ""},
		{[]string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}, ""}, // secure in Go's list, allowed when chosen
		{[]string{"TLS_RSA_WITH_RC4_128_SHA"}, "is insecure"},
		{[]string{"TLS_AES_128_GCM_SHA256"}, "is a TLS 1.3 suite"},
		{[]string{"TLS_NOPE"}, "is not a TLS 1.2 cipher suite"},
		{nil, "must name at least one"},
	} {
		c := valid()
		c.Listen.TLS.CipherSuites = tc.suites
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: %v, want %q", tc.suites, err, tc.want)
		}
	}
}
