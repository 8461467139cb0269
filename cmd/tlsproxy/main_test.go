package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/syncbuf"
	"github.com/tlsproxy/tlsproxy/proxy/config"
)

// clearEnv keeps the caller's TLSPROXY_* variables out of the tests.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, k := range config.Keys() {
		t.Setenv(config.EnvVar(k), "")
	}
}

// devConfig writes dev certificates and a config using them into a temp dir.
func devConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	var out, errOut bytes.Buffer
	if code := cli([]string{"certs", "dev", "--out", certs}, &out, &errOut); code != 0 {
		t.Fatalf("certs dev: %d %s", code, errOut.String())
	}
	cfg := "listen:\n  address: 127.0.0.1:0\n  tls:\n" +
		"    cert_file: " + filepath.Join(certs, "server.crt") + "\n" +
		"    key_file: " + filepath.Join(certs, "server.key") + "\n" +
		"    client_ca_file: " + filepath.Join(certs, "ca.crt") + "\n" +
		"upstream:\n  url: redis://127.0.0.1:1\n" +
		"admin:\n  address: 127.0.0.1:0\n" // never the default port, which another proxy may hold
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCLI(t *testing.T) {
	clearEnv(t)
	cfg := devConfig(t)
	certDir := filepath.Join(t.TempDir(), "dev")
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderr   string
		noStdout bool
	}{
		{name: "help", args: []string{"--help"}, code: 0, stdout: "tlsproxy certs dev"},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: "Usage:"},
		{name: "run -h", args: []string{"run", "-h"}, code: 0, stdout: "-config"},
		{name: "check -h", args: []string{"check", "--help"}, code: 0, stdout: "tlsproxy check"},
		{name: "certs -h", args: []string{"certs", "-h"}, code: 0, stdout: "certs dev"},
		{name: "certs dev -h", args: []string{"certs", "dev", "-h"}, code: 0, stdout: `(default "certs/dev")`},
		{name: "version", args: []string{"version"}, code: 0, stdout: "tlsproxy dev (go1."},
		{name: "unknown command", args: []string{"serve"}, code: 2, stderr: `unknown command "serve"`, noStdout: true},
		{name: "unknown flag", args: []string{"run", "--confg", "x"}, code: 2, stderr: "flag provided but not defined: -confg"},
		{name: "stray argument", args: []string{"run", "extra"}, code: 2, stderr: `unexpected argument "extra"`},
		{name: "certs without subcommand", args: []string{"certs"}, code: 2, stderr: "missing subcommand"},
		{name: "certs unknown", args: []string{"certs", "prod"}, code: 2, stderr: `unknown subcommand "prod"`},
		{name: "missing config", args: []string{"--config", "/nonexistent/tlsproxy.yaml"}, code: 1, stderr: `"/nonexistent/tlsproxy.yaml" does not exist`},
		{name: "no config needs certs", args: []string{"check"}, code: 1, stderr: "listen.tls.cert_file: is required"},
		{name: "check ok", args: []string{"check", "--config", cfg, "--offline"}, code: 0, stdout: "configuration OK"},
		{name: "certs dev", args: []string{"certs", "dev", "--out", certDir}, code: 0, stdout: "wrote development certificates"},
		{name: "certs dev again", args: []string{"certs", "dev", "--out", certDir}, code: 1, stderr: filepath.Join(certDir, "ca.crt")},
		{name: "certs dev --force", args: []string{"certs", "dev", "--out", certDir, "--force"}, code: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := cli(tt.args, &out, &errOut)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.stdout) {
				t.Errorf("stdout %q lacks %q", out.String(), tt.stdout)
			}
			if !strings.Contains(errOut.String(), tt.stderr) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tt.stderr)
			}
			if tt.noStdout && out.Len() > 0 {
				t.Errorf("unexpected stdout %q", out.String())
			}
		})
	}
}

// TestRunStopsOnSIGTERM runs the default command and checks that SIGTERM ends it
// cleanly with exit status 0.
func TestRunStopsOnSIGTERM(t *testing.T) {
	clearEnv(t)
	cfg := devConfig(t)
	var out, errOut syncbuf.Buffer
	done := make(chan int, 1)
	go func() { done <- cli([]string{"--config", cfg}, &out, &errOut) }()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errOut.String(), `"message":"listening"`) {
		select {
		case code := <-done:
			t.Fatalf("exited early with %d: %s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not start: %s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after SIGTERM: %s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("run did not stop after SIGTERM: %s", errOut.String())
	}
	if !strings.Contains(errOut.String(), `"level":"info"`) {
		t.Errorf("expected JSON logs by default: %s", errOut.String())
	}
}
