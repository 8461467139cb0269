// Package testredis starts real redis-server processes for tests.
//
// Every server is bound to loopback only, keeps no data on disk (save "",
// appendonly no), lives in a per-test temporary directory and is stopped in
// t.Cleanup. redis-server must be on PATH; `make test` installs it.
package testredis

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long Start waits for a PING answer.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
	stopTimeout = 5 * time.Second
	// startAttempts is how many times Start retries when the chosen port was
	// grabbed by someone else between FreePort and redis-server binding it.
	startAttempts = 5
	// maxSocketPath is the usable length of sockaddr_un.sun_path (108 on Linux,
	// including the terminating NUL).
	maxSocketPath = 100
)

// Options configures a redis-server started by Start.
type Options struct {
	// Unix also listens on a unix socket (in a short directory under the
	// system temp dir). The TCP port stays enabled unless NoTCP is set.
	Unix bool
	// NoTCP disables TCP (port 0): unix socket only. Implies Unix.
	NoTCP bool
	// TLS, when set, enables Redis's own TLS on a TLS port (tls-port); the
	// plain port is disabled unless KeepPlain is set.
	TLS *TLS
	// KeepPlain keeps a plain TCP port next to the TLS port (see
	// Server.PlainAddr).
	KeepPlain bool
	// Password sets requirepass.
	Password string
	// Args are extra redis-server arguments appended last (so they override
	// the defaults), e.g. "--maxclients", "100".
	Args []string
}

// TLS configures Redis's own TLS listener.
type TLS struct {
	CertFile, KeyFile, CAFile string
	// AuthClients sets tls-auth-clients yes|no.
	AuthClients bool
	// ClientCertFile and ClientKeyFile are optional: the client certificate
	// that the readiness probe presents when AuthClients is set. They default
	// to CertFile/KeyFile. If the server rejects the probe's certificate, the
	// probe falls back to Redis's own "ready to accept connections" log line.
	ClientCertFile, ClientKeyFile string
}

// Server is a running (or stopped) redis-server.
type Server struct {
	// Addr is "127.0.0.1:PORT": the plain port, or the TLS port when TLS is
	// set. Empty when NoTCP.
	Addr string
	Port int
	// PlainAddr/PlainPort are the plain TCP listener when TLS and KeepPlain
	// are set; otherwise they equal Addr/Port when TLS is not set, and are
	// empty/0 when TLS is set without KeepPlain.
	PlainAddr string
	PlainPort int
	// Socket is the unix socket path, or "" when Unix is not set.
	Socket string
	// Dir is redis-server's working directory (a t.TempDir()).
	Dir string
	// LogFile collects redis-server's stdout and stderr.
	LogFile string
	// Password is the requirepass value, if any.
	Password string

	opts Options
	args []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("testredis: find a free port: %v", err)
	}
	return p
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs a redis-server configured by o, waits until it answers PING and
// registers its shutdown with t.Cleanup. It fails the test when redis-server
// is missing or does not come up.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testredis: redis-server not found on PATH (%v); run `make test`, which installs redis-server", err)
	}
	if o.NoTCP {
		o.Unix = true
		if o.TLS != nil {
			t.Fatalf("testredis: Options.NoTCP cannot be combined with Options.TLS (Redis serves TLS on TCP only)")
		}
	}

	s := &Server{Dir: t.TempDir(), Password: o.Password, opts: o}
	s.LogFile = filepath.Join(s.Dir, "redis.log")
	if o.Unix {
		s.Socket = filepath.Join(socketDir(t), "redis.sock")
	}
	t.Cleanup(s.Stop)

	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		if err := s.pickPorts(); err != nil {
			t.Fatalf("testredis: find a free port: %v", err)
		}
		s.args = s.buildArgs()
		lastErr = s.start(bin)
		if lastErr == nil {
			return s
		}
		s.Stop()
		if !errors.Is(lastErr, errAddrInUse) {
			break
		}
	}
	t.Fatalf("testredis: start redis-server %s: %v\n--- tail of %s ---\n%s", strings.Join(quoteArgs(s.args), " "), lastErr, s.LogFile, tail(s.LogFile))
	return nil
}

// Restart starts the server again with the same configuration, on the same
// port(s) and socket. It is a no-op if the server is running.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.running() {
		return
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testredis: redis-server not found on PATH (%v); run `make test`, which installs redis-server", err)
	}
	var lastErr error
	deadline := time.Now().Add(readyTimeout)
	for {
		lastErr = s.start(bin)
		if lastErr == nil {
			return
		}
		s.Stop()
		// The same port may be briefly held by something else; retry on
		// "address in use" only.
		if !errors.Is(lastErr, errAddrInUse) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("testredis: restart redis-server %s: %v\n--- tail of %s ---\n%s", strings.Join(quoteArgs(s.args), " "), lastErr, s.LogFile, tail(s.LogFile))
}

// Stop stops the server: SIGTERM, then SIGKILL after a few seconds. It is
// idempotent and safe to call from several goroutines.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(stopTimeout):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	s.cmd = nil
	if s.Socket != "" {
		// Redis removes its socket on a clean shutdown, but not when killed.
		_ = os.Remove(s.Socket)
	}
}

// running reports whether the redis-server process is alive.
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// LogTail returns the last lines of the server's log, for failure messages.
func (s *Server) LogTail() string { return tail(s.LogFile) }

func (s *Server) pickPorts() error {
	s.Addr, s.Port, s.PlainAddr, s.PlainPort = "", 0, "", 0
	if s.opts.NoTCP {
		return nil
	}
	p, err := freePort()
	if err != nil {
		return err
	}
	s.Port, s.Addr = p, hostPort(p)
	switch {
	case s.opts.TLS == nil:
		s.PlainPort, s.PlainAddr = s.Port, s.Addr
	case s.opts.KeepPlain:
		for {
			pp, err := freePort()
			if err != nil {
				return err
			}
			if pp != p {
				s.PlainPort, s.PlainAddr = pp, hostPort(pp)
				break
			}
		}
	}
	return nil
}

func hostPort(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }

func (s *Server) buildArgs() []string {
	o := s.opts
	a := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.PlainPort),
		"--save", "",
		"--appendonly", "no",
		"--dir", s.Dir,
		"--daemonize", "no",
		"--logfile", "",
		"--protected-mode", "no",
	}
	if s.Socket != "" {
		a = append(a, "--unixsocket", s.Socket, "--unixsocketperm", "700")
	}
	if o.TLS != nil {
		a = append(a, "--tls-port", strconv.Itoa(s.Port))
		if o.TLS.CertFile != "" {
			a = append(a, "--tls-cert-file", o.TLS.CertFile)
		}
		if o.TLS.KeyFile != "" {
			a = append(a, "--tls-key-file", o.TLS.KeyFile)
		}
		if o.TLS.CAFile != "" {
			a = append(a, "--tls-ca-cert-file", o.TLS.CAFile)
		}
		a = append(a, "--tls-auth-clients", yesNo(o.TLS.AuthClients))
	}
	if o.Password != "" {
		a = append(a, "--requirepass", o.Password)
	}
	return append(a, o.Args...)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// start launches redis-server with s.args and waits until it is ready. On
// error the process may still be running; the caller stops it.
func (s *Server) start(bin string) error {
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy of the descriptor
	fmt.Fprintf(logf, "### testredis: %s %s\n", bin, strings.Join(quoteArgs(s.args), " "))
	logStart, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(bin, s.args...)
	cmd.Dir = s.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	var probeErr error
	for {
		select {
		case <-exited:
			if logContains(s.LogFile, logStart, "address already in use") {
				return fmt.Errorf("%w (redis-server exited: %v)", errAddrInUse, waitErr)
			}
			return fmt.Errorf("redis-server exited during startup: %v", waitErr)
		default:
		}
		if probeErr = s.probeAll(logStart); probeErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %v", readyTimeout, probeErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probeAll PINGs every listener the server should have.
func (s *Server) probeAll(logStart int64) error {
	if s.PlainAddr != "" {
		if err := s.probe("tcp", s.PlainAddr, nil); err != nil {
			return fmt.Errorf("plain %s: %w", s.PlainAddr, err)
		}
	}
	if s.Socket != "" {
		if err := s.probe("unix", s.Socket, nil); err != nil {
			return fmt.Errorf("unix %s: %w", s.Socket, err)
		}
	}
	if s.opts.TLS != nil {
		cfg, err := s.probeTLSConfig()
		if err != nil {
			return err
		}
		if err := s.probe("tcp", s.Addr, cfg); err != nil {
			// With tls-auth-clients the server may reject the probe's
			// certificate even though it is up: a TLS alert from the server
			// plus Redis's own readiness line in the log is good enough.
			if isRemoteTLSAlert(err) && logSaysReady(s.LogFile, logStart) {
				return nil
			}
			return fmt.Errorf("tls %s: %w", s.Addr, err)
		}
	}
	return nil
}

func (s *Server) probeTLSConfig() (*tls.Config, error) {
	o := s.opts.TLS
	// The probe only checks readiness; certificate verification is the job of
	// the tests themselves, so it does not verify the server.
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // readiness probe only
	if o.AuthClients {
		certFile, keyFile := o.ClientCertFile, o.ClientKeyFile
		if certFile == "" {
			certFile, keyFile = o.CertFile, o.KeyFile
		}
		if certFile != "" {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("load probe client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
	}
	return cfg, nil
}

// probe connects to addr, optionally authenticates, and expects +PONG.
func (s *Server) probe(network, addr string, tlsCfg *tls.Config) error {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.Dial(network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if tlsCfg != nil {
		tc := tls.Client(conn, tlsCfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		conn = tc
	}
	var req bytes.Buffer
	if s.Password != "" {
		writeCommand(&req, "AUTH", s.Password)
	}
	writeCommand(&req, "PING")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	if s.Password != "" {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("AUTH answered %q", strings.TrimSpace(line))
		}
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

func writeCommand(b *bytes.Buffer, args ...string) {
	fmt.Fprintf(b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(b, "$%d\r\n%s\r\n", len(a), a)
	}
}

// socketDir returns a short directory for a unix socket: t.TempDir() paths
// contain the test name and easily exceed sun_path's 108 bytes.
func socketDir(t testing.TB) string {
	t.Helper()
	base := ""
	if len(os.TempDir()) > 40 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "rd")
	if err != nil {
		t.Fatalf("testredis: create socket dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if len(dir)+len("/redis.sock") > maxSocketPath {
		t.Fatalf("testredis: unix socket path under %s is too long", dir)
	}
	return dir
}

var errAddrInUse = errors.New("port already in use")

// isRemoteTLSAlert reports whether err is an alert sent by the TLS peer.
func isRemoteTLSAlert(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "remote error"
}

func logSaysReady(logFile string, from int64) bool {
	return logContains(logFile, from, "ready to accept connections")
}

// logContains reports whether the log, from offset from on, contains substr
// (lower case), ignoring case.
func logContains(logFile string, from int64, substr string) bool {
	b, err := os.ReadFile(logFile)
	if err != nil || int64(len(b)) < from {
		return false
	}
	return bytes.Contains(bytes.ToLower(b[from:]), []byte(substr))
}

// tail returns the last 40 lines (at most 8 KiB) of a file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if len(b) > 8192 {
		b = b[len(b)-8192:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return q
}
