package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// DefaultRedisPort is used when a redis:// or rediss:// URL has no port.
const DefaultRedisPort = "6379"

// Target is where and how to reach Redis, parsed from upstream.url and
// upstream.password_file.
type Target struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port for tcp, the socket path for unix.
	Address string
	// TLS is true for rediss:// URLs.
	TLS bool
	// Username and Password authenticate to Redis (AUTH/HELLO); both may be empty.
	Username, Password string
	// DB is the database selected on connect.
	DB int
}

// String describes the target without its password, for logs.
func (t Target) String() string {
	scheme := "redis"
	switch {
	case t.Network == "unix":
		scheme = "unix"
	case t.TLS:
		scheme = "rediss"
	}
	return fmt.Sprintf("%s://%s (db %d)", scheme, t.Address, t.DB)
}

// Target parses u.URL and, when u.PasswordFile is set, reads the password from it.
// Errors name the key (upstream.url, upstream.password_file) and never contain the
// password.
func (u Upstream) Target() (Target, error) {
	t, err := parseURL(u.URL)
	if err != nil {
		return Target{}, fmt.Errorf("upstream.url: %w", err)
	}
	if u.PasswordFile == "" {
		return t, nil
	}
	if t.Password != "" {
		return Target{}, errors.New("upstream.password_file: is set but upstream.url already contains a password; keep only one (the file keeps it out of the config)")
	}
	b, err := os.ReadFile(u.PasswordFile)
	if err != nil {
		return Target{}, fmt.Errorf("upstream.password_file: read %q: %w", u.PasswordFile, err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return Target{}, fmt.Errorf("upstream.password_file: %q is empty; put the Redis password in it or remove the key", u.PasswordFile)
	}
	t.Password = pw
	return t, nil
}

// parseURL accepts redis://[user:pass@]host[:port][/db], rediss://... and
// unix://[user:pass@]/path.sock[?db=N].
func parseURL(raw string) (Target, error) {
	if raw == "" {
		return Target{}, errors.New("must not be empty; use e.g. redis://127.0.0.1:6379")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL, password included: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Target{}, fmt.Errorf("cannot parse URL (%v); use e.g. redis://127.0.0.1:6379", err)
	}
	shown := u.Redacted()

	var t Target
	if u.User != nil {
		t.Username = u.User.Username()
		t.Password, _ = u.User.Password()
	}
	query := u.Query()
	dbParam := query.Get("db")
	query.Del("db")
	for name := range query {
		return Target{}, fmt.Errorf("%s: unknown query parameter %q (only db is supported)", shown, name)
	}

	switch u.Scheme {
	case "redis", "rediss":
		t.Network, t.TLS = "tcp", u.Scheme == "rediss"
		host, port := u.Hostname(), u.Port()
		if host == "" {
			return Target{}, fmt.Errorf("%s: missing host; use e.g. %s://127.0.0.1:6379", shown, u.Scheme)
		}
		if port == "" {
			port = DefaultRedisPort
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return Target{}, fmt.Errorf("%s: invalid port %q", shown, port)
		}
		t.Address = net.JoinHostPort(host, port)
		if p := strings.TrimPrefix(u.Path, "/"); p != "" {
			if dbParam != "" {
				return Target{}, fmt.Errorf("%s: database given twice (path and ?db=)", shown)
			}
			dbParam = p
		}
	case "unix":
		t.Network = "unix"
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return Target{}, fmt.Errorf("%s: needs an absolute socket path, e.g. unix:///var/run/redis/redis.sock", shown)
		}
		t.Address = u.Path
	case "":
		return Target{}, fmt.Errorf("%s: missing scheme; use redis://, rediss:// or unix://", shown)
	default:
		return Target{}, fmt.Errorf("%s: scheme %q is not one of redis, rediss, unix", shown, u.Scheme)
	}

	if dbParam != "" {
		db, err := strconv.Atoi(dbParam)
		if err != nil || db < 0 {
			return Target{}, fmt.Errorf("%s: database %q is not a non-negative integer", shown, dbParam)
		}
		t.DB = db
	}
	return t, nil
}
