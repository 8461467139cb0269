package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// checkConfig writes dev certificates and a config using them, with extra
// appended to the listen.tls section.
func checkConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if err := tlsconf.WriteDev(certs, false); err != nil {
		t.Fatal(err)
	}
	cfg := "listen:\n  address: 127.0.0.1:6380\n  tls:\n" +
		"    cert_file: " + filepath.Join(certs, "server.crt") + "\n" +
		"    key_file: " + filepath.Join(certs, "server.key") + "\n" +
		"    client_ca_file: " + filepath.Join(certs, "ca.crt") + "\n" + extra +
		"upstream:\n  url: redis://127.0.0.1:6379\n"
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkLines returns the checklist lines of check's text output (without the
// closing "tlsproxy: ..." summary).
func checkLines(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "tlsproxy: ") {
		t.Fatalf("no summary line:\n%s", out)
	}
	return lines[:len(lines)-1]
}

func TestCheckChecklist(t *testing.T) {
	clearEnv(t)
	t.Run("good", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := cli([]string{"check", "--config", checkConfig(t, ""), "--offline"}, &out, &errOut)
		if code != 0 {
			t.Fatalf("exit %d, want 0\n%s%s", code, out.String(), errOut.String())
		}
		lines := checkLines(t, out.String())
		if len(lines) != 10 {
			t.Errorf("%d checklist lines, want 10:\n%s", len(lines), out.String())
		}
		skips := 0
		for _, l := range lines {
			if !strings.HasPrefix(l, "PASS  ") && !strings.HasPrefix(l, "WARN  ") && !strings.HasPrefix(l, "SKIP  ") {
				t.Errorf("line %q is not PASS, WARN or SKIP", l)
			}
			if strings.HasPrefix(l, "SKIP  ") {
				skips++
			}
		}
		if skips != 2 {
			t.Errorf("%d SKIP lines with --offline, want 2:\n%s", skips, out.String())
		}
	})
	t.Run("client_auth none", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := cli([]string{"check", "--config", checkConfig(t, "    client_auth: none\n"), "--offline"}, &out, &errOut)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out.String(), errOut.String())
		}
		if !strings.Contains(out.String(), "FAIL  client authentication: ") {
			t.Errorf("no FAIL line for client authentication:\n%s", out.String())
		}
	})
	t.Run("json", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := cli([]string{"check", "--config", checkConfig(t, "    client_auth: none\n"), "--offline", "--json"}, &out, &errOut)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s%s", code, out.String(), errOut.String())
		}
		var rs []struct{ Item, Status, Reason string }
		if err := json.Unmarshal(out.Bytes(), &rs); err != nil {
			t.Fatalf("--json output does not parse: %v\n%s", err, out.String())
		}
		if len(rs) != 10 || rs[0].Item != "client authentication" || rs[0].Status != "fail" || rs[6].Status != "skip" {
			t.Errorf("unexpected results: %+v", rs)
		}
	})
	t.Run("config error", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := cli([]string{"check", "--config", checkConfig(t, "    min_version: \"1.1\"\n"), "--offline"}, &out, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), "listen.tls.min_version") {
			t.Errorf("exit %d, want 1 naming listen.tls.min_version\n%s%s", code, out.String(), errOut.String())
		}
	})
}
