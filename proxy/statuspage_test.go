package proxy

import (
	"bytes"
	"context"
	"errors"
	"html"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// TestStatusPage loads the admin status page (GET /) in headless Chromium
// and checks the DOM the browser built, not the bytes Go wrote: the
// summary, the certificate rows and their expiry classes, the upstream
// state going down and up again with Redis, and that the page pulls in no
// outside resources.
func TestStatusPage(t *testing.T) {
	chromium := spNeedChromium(t)

	// A proxy like startPlain's, but whose server certificate expires in 30
	// days (inside the 90-day rotation window: "warning").
	rs := testredis.Start(t, testredis.Options{})
	p := newPKI(t)
	short, err := p.ca.Issue(tlsconf.LeafOptions{
		CommonName: "statuspage-server", DNSNames: []string{"localhost"},
		IPs:      []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		NotAfter: time.Now().Add(30 * 24 * time.Hour), Server: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "short.crt"), filepath.Join(dir, "short.key")
	writeFile(t, certFile, short.CertPEM)
	writeFile(t, keyFile, short.KeyPEM)
	e := startProxy(t, p, "redis://"+rs.Addr, func(c *config.Config) {
		c.Listen.TLS.CertFile, c.Listen.TLS.KeyFile = certFile, keyFile
	})
	e.redis = rs

	// Exactly two client connections: one pooled connection per client,
	// each opened by a PING.
	for range 2 {
		c := e.client(t, 2, func(o *redis.Options) { o.PoolSize = 1 })
		if err := c.Ping(context.Background()).Err(); err != nil {
			t.Fatalf("PING through the proxy: %v", err)
		}
	}

	url := "http://" + e.admin + "/"
	dom := spDumpDOM(t, chromium, url)
	// Chromium's parser adds the <tbody> that the template leaves out: proof
	// that this is the browser's DOM.
	if !strings.Contains(spElem(t, dom, "table", "certificates").inner, "<tbody>") {
		t.Errorf("#certificates has no <tbody>: not a browser-rendered DOM?\n%s", dom)
	}
	if got := spElem(t, dom, "td", "state").text(); got != "serving" {
		t.Errorf("#state = %q, want serving", got)
	}
	wantClients := "2 of " + strconv.Itoa(e.srv.cfg.Limits.MaxClients)
	if got := spElem(t, dom, "td", "clients").text(); got != wantClients {
		t.Errorf("#clients = %q, want %q", got, wantClients)
	}
	if got := spElem(t, dom, "td", "upstream-link").text(); got != "not encrypted" {
		t.Errorf("#upstream-link = %q, want \"not encrypted\"", got)
	}
	if el := spElem(t, dom, "td", "upstream-state"); el.class() != "up" || el.text() != "up" {
		t.Errorf("#upstream-state: class %q, text %q; want up, up", el.class(), el.text())
	}

	// One row per certificate, coloured by its expiry class.
	rows := regexp.MustCompile(`(?s)<tr\b([^>]*)>(.*?)</tr>`).FindAllStringSubmatch(spElem(t, dom, "table", "certificates").inner, -1)
	cell := regexp.MustCompile(`(?s)<td\b([^>]*)>(.*?)</td>`)
	seen := map[string]int{}
	for _, r := range rows {
		cells := cell.FindAllStringSubmatch(r[2], -1)
		if len(cells) == 0 {
			continue // the header row
		}
		role, class, days := spText(cells[0][2]), spClass(r[1]), ""
		for _, c := range cells {
			if spClass(c[1]) == "days" {
				days = spText(c[2])
			}
		}
		seen[role]++
		switch role {
		case "server":
			if class != "warning" || (days != "29" && days != "30") {
				t.Errorf("server row: class %q, days left %q; want warning, 29 or 30", class, days)
			}
		case "client-ca":
			if class != "ok" {
				t.Errorf("client-ca row: class %q (days left %q), want ok", class, days)
			}
		default:
			t.Errorf("unexpected certificate row %q (class %q)", role, class)
		}
	}
	if seen["server"] != 1 || seen["client-ca"] != 1 {
		t.Errorf("certificate rows by role = %v, want one server and one client-ca", seen)
	}

	// Nothing is loaded from elsewhere: no scripts, stylesheets, images or
	// frames, and the only links are the relative /status and /metrics.
	for _, tag := range []string{"<script", "<link", "<img", "<iframe", "<object", "<embed", "url("} {
		if strings.Contains(dom, tag) {
			t.Errorf("rendered DOM contains %q", tag)
		}
	}
	links := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b(src|href|action|srcset|poster)="([^"]*)"`).FindAllStringSubmatch(dom, -1) {
		if v := m[2]; v != "/status" && v != "/metrics" {
			t.Errorf("rendered DOM has %s=%q; only /status and /metrics links are expected", m[1], v)
		}
		links[m[1]+"="+m[2]] = true
	}
	if !links["href=/status"] || !links["href=/metrics"] {
		t.Errorf("links to /status and /metrics missing from the rendered page (got %v)", links)
	}

	// Redis goes away: the page says so, with a reason. The proxy caches
	// PING results for a second and redials with backoff, hence the polling.
	e.redis.Stop()
	spPoll(t, chromium, url, "down", func(el spElement) bool { return el.class() == "down" && strings.HasPrefix(el.text(), "down:") })
	e.redis.Restart(t)
	spPoll(t, chromium, url, "up", func(el spElement) bool { return el.class() == "up" && el.text() == "up" })
}

// spNeedChromium returns Chromium's path, or skips the test when it is
// missing, unless CI or REQUIRE_TEST_TOOLS is set (then it fails).
func spNeedChromium(t *testing.T) string {
	const bin = "/usr/bin/chromium"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" || os.Getenv("REQUIRE_TEST_TOOLS") != "" {
			t.Fatalf("%s missing and CI or REQUIRE_TEST_TOOLS is set: install Debian's chromium package (make deps does): %v", bin, err)
		}
		t.Skipf("%s missing (install Debian's chromium package, or run make deps): %v", bin, err)
	}
	return bin
}

// spDumpDOM loads url in a fresh headless Chromium and returns the
// serialised DOM after the page has loaded.
func spDumpDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--dump-dom", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Chromium forks helpers that inherit stdout: on timeout end the whole
	// process group this test started, and do not wait on the pipes forever.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil || !strings.Contains(stdout.String(), "</html>") {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = errors.Join(err, ctx.Err())
		}
		t.Fatalf("chromium --dump-dom %s: %v\nstdout:\n%s\nstderr:\n%s", url, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// spPoll reloads the page until #upstream-state satisfies ok, for up to 15 s.
func spPoll(t *testing.T, chromium, url, want string, ok func(spElement) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		el := spElem(t, spDumpDOM(t, chromium, url), "td", "upstream-state")
		if ok(el) {
			t.Logf("#upstream-state: class %q, text %q", el.class(), el.text())
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("#upstream-state did not become %s within 15s: class %q, text %q", want, el.class(), el.text())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// spElement is an element of the dumped DOM found by its id.
type spElement struct{ attrs, inner string }

func (el spElement) class() string { return spClass(el.attrs) }
func (el spElement) text() string  { return spText(el.inner) }

// spElem finds the <tag id="id"> element in dom (the page nests no element
// in one of the same tag) or fails the test.
func spElem(t *testing.T, dom, tag, id string) spElement {
	t.Helper()
	re := regexp.MustCompile(`(?s)<` + tag + `\b([^>]*\bid="` + regexp.QuoteMeta(id) + `"[^>]*)>(.*?)</` + tag + `>`)
	m := re.FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("no <%s id=%q> in the rendered DOM:\n%s", tag, id, dom)
	}
	return spElement{attrs: m[1], inner: m[2]}
}

var spClassRE = regexp.MustCompile(`\bclass="([^"]*)"`)

func spClass(attrs string) string {
	if m := spClassRE.FindStringSubmatch(attrs); m != nil {
		return m[1]
	}
	return ""
}

var spTagRE = regexp.MustCompile(`<[^>]*>`)

// spText is the text content of serialised HTML, whitespace-trimmed.
func spText(inner string) string {
	return strings.TrimSpace(html.UnescapeString(spTagRE.ReplaceAllString(inner, "")))
}
