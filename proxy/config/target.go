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
//
// The user name and password are split off before url.Parse sees the rest,
// so that no error (url.Parse quotes what it cannot parse) and no field of
// Target can hold a piece of the password, even when the password has
// characters that URL syntax splits at (#, /, ?) or a bad % escape.
func parseURL(raw string) (Target, error) {
	if raw == "" {
		return Target{}, errors.New("must not be empty; use e.g. redis://127.0.0.1:6379")
	}
	rest, userinfo, shown, err := splitUserinfo(raw)
	if err != nil {
		return Target{}, err
	}
	u, err := url.Parse(rest)
	if err != nil {
		// url.Error repeats the whole URL: keep only the cause, which quotes
		// rest at most, and rest holds no password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Target{}, fmt.Errorf("cannot parse URL (%v); use e.g. redis://127.0.0.1:6379", err)
	}

	var t Target
	if userinfo != nil {
		t.Username = userinfo.Username()
		t.Password, _ = userinfo.Password()
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

// errUserinfo is the error for a user name or password that cannot be read
// from the URL. It quotes nothing of the URL.
func errUserinfo(shown string) error {
	return fmt.Errorf("%s: cannot read the user name and password: percent-encode these characters in them: "+
		"# as %%23, / as %%2F, ? as %%3F, %% as %%25, @ as %%40 (in a socket path too), space as %%20; "+
		"or keep the password in upstream.password_file", shown)
}

// splitUserinfo splits raw into the URL without its user-info part (rest),
// the user name and password (nil when the URL has none) and the URL as
// errors may show it, with everything that could be part of the user-info
// part replaced by "xxxxx".
//
// url.Parse ends the user-info part at the last '@' before the first '/',
// '?' or '#'. A password holding one of those makes url.Parse read part of
// it as host, port, path, query or fragment; any '@' after that point means
// just that, so such a URL is refused, as is a password with a bad %
// escape, and the error shows none of it.
func splitUserinfo(raw string) (rest string, userinfo *url.Userinfo, shown string, err error) {
	lastAt := strings.LastIndexByte(raw, '@')
	i := strings.Index(raw, "://")
	if i < 0 || !isScheme(raw[:i]) {
		if lastAt >= 0 {
			return "", nil, "", fmt.Errorf("xxxxx@%s: missing scheme or \"//\"; use e.g. redis://user:password@127.0.0.1:6379", raw[lastAt+1:])
		}
		return raw, nil, raw, nil
	}
	start := i + len("://")
	if lastAt < start {
		return raw, nil, raw, nil // no '@' after the scheme
	}
	shown = raw[:start] + "xxxxx@" + raw[lastAt+1:]
	if strings.HasPrefix(raw[start:], "/") {
		// No authority (unix:///path): an '@' is part of the path.
		return raw, nil, shown, nil
	}
	authority := raw[start:]
	if j := strings.IndexAny(authority, "/?#"); j >= 0 {
		authority = authority[:j]
	}
	if start+strings.LastIndexByte(authority, '@') != lastAt {
		return "", nil, "", errUserinfo(shown)
	}
	// url.Parse reads the user-info part by itself exactly as in the whole
	// URL; its error would quote it, so it is replaced.
	u, err := url.Parse("redis://" + raw[start:lastAt] + "@host")
	if err != nil || u.User == nil {
		return "", nil, "", errUserinfo(shown)
	}
	return raw[:start] + raw[lastAt+1:], u.User, shown, nil
}

// isScheme reports whether s is a URL scheme: a letter, then letters,
// digits, '+', '-' or '.'.
func isScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// IsLoopbackHost reports whether host (without a port; brackets allowed) is
// a loopback name or address: localhost, *.localhost, 127.0.0.0/8, ::1.
func IsLoopbackHost(host string) bool {
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
