// Command scale measures how a TLS endpoint copes with many clients:
//
//   - phase 1: open -conns mutual-TLS connections, prove each is live with
//     one PING, keep them idle, and read the resident memory (VmRSS) of the
//     process -pid before and after;
//   - phase 2: for -handshakes-duration, -workers goroutines repeatedly dial,
//     do a full (non-resumed) mTLS handshake, PING and close; the rate of
//     completed cycles is reported.
//
// The result is printed as one JSON line on stdout; progress goes to stderr.
// The process running this tool needs a file-descriptor limit above -conns.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// userHZ is the unit of utime/stime in /proc/PID/stat. Linux exposes it as
// USER_HZ, which is 100 on every mainstream architecture.
const userHZ = 100

var (
	pingCmd   = []byte("*1\r\n$4\r\nPING\r\n")
	pongReply = []byte("+PONG\r\n")
)

// Result is the JSON line the tool prints.
type Result struct {
	Label      string `json:"label"`
	Addr       string `json:"addr"`
	PID        int    `json:"pid"`
	GoVersion  string `json:"go_version"`
	TLSVersion string `json:"tls_version,omitempty"`
	Cipher     string `json:"cipher,omitempty"`

	// Phase 1: idle connections.
	Conns          int     `json:"conns"`
	ConnsOpen      int     `json:"conns_open"`
	ConnErrors     int     `json:"conn_errors"`
	ConnFirstError string  `json:"conn_first_error,omitempty"`
	OpenSeconds    float64 `json:"open_seconds"`
	RSSBeforeKiB   int64   `json:"rss_before_kib"`
	RSSAfterKiB    int64   `json:"rss_after_kib"`
	RSSClosedKiB   int64   `json:"rss_after_close_kib"`
	HWMKiB         int64   `json:"hwm_kib"`
	RSSBeforeMiB   float64 `json:"rss_before_mib"`
	RSSAfterMiB    float64 `json:"rss_after_mib"`
	PerConnKiB     float64 `json:"per_conn_kib"`

	// Phase 2: handshake rate.
	HandshakeSeconds    float64 `json:"handshake_seconds"`
	Handshakes          int64   `json:"handshakes"`
	HandshakeErrors     int64   `json:"handshake_errors"`
	HandshakeFirstError string  `json:"handshake_first_error,omitempty"`
	HandshakesPerSec    float64 `json:"handshakes_per_sec"`
	HandshakeP50Ms      float64 `json:"handshake_p50_ms"`
	HandshakeP99Ms      float64 `json:"handshake_p99_ms"`
	CPUUsPerHandshake   float64 `json:"cpu_us_per_handshake"`
	Workers             int     `json:"workers"`
}

type options struct {
	addr, ca, cert, key, serverName, label string
	conns, pid, workers, dialConcurrency   int
	hsDuration, settle, timeout            time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:6380", "TLS endpoint host:port")
	flag.StringVar(&o.ca, "ca", "", "CA certificate (PEM) that signed the server certificate")
	flag.StringVar(&o.cert, "cert", "", "client certificate (PEM)")
	flag.StringVar(&o.key, "key", "", "client private key (PEM)")
	flag.StringVar(&o.serverName, "server-name", "", "TLS server name to verify (default: host part of -addr)")
	flag.StringVar(&o.label, "label", "", "name of the endpoint, copied into the output")
	flag.IntVar(&o.conns, "conns", 10000, "idle connections to hold in phase 1 (0 skips the phase)")
	flag.IntVar(&o.pid, "pid", 0, "process whose VmRSS and CPU time are read (0: none)")
	flag.DurationVar(&o.hsDuration, "handshakes-duration", 5*time.Second, "length of phase 2 (0 skips the phase)")
	flag.IntVar(&o.workers, "workers", 8, "concurrent handshake loops in phase 2")
	flag.IntVar(&o.dialConcurrency, "dial-concurrency", 64, "concurrent dials while opening phase-1 connections")
	flag.DurationVar(&o.settle, "settle", time.Second, "pause before reading RSS")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "per-connection dial+handshake+PING timeout")
	flag.Parse()

	if err := run(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func run(o options, out io.Writer) error {
	if o.ca == "" || o.cert == "" || o.key == "" {
		return errors.New("-ca, -cert and -key are required")
	}
	if o.workers < 1 || o.dialConcurrency < 1 {
		return errors.New("-workers and -dial-concurrency must be positive")
	}
	cfg, err := clientConfig(o)
	if err != nil {
		return err
	}
	res := Result{Label: o.label, Addr: o.addr, PID: o.pid, GoVersion: runtime.Version(), Conns: o.conns, Workers: o.workers}

	// One probe connection fails fast on a wrong address or certificate and
	// records what TLS parameters the endpoint negotiates.
	probe, err := dialPing(context.Background(), o.addr, cfg, o.timeout)
	if err != nil {
		return fmt.Errorf("probe connection: %w", err)
	}
	st := probe.ConnectionState()
	res.TLSVersion = tls.VersionName(st.Version)
	res.Cipher = tls.CipherSuiteName(st.CipherSuite)
	probe.Close()

	if o.conns > 0 {
		idlePhase(o, cfg, &res)
	}
	if o.hsDuration > 0 {
		handshakePhase(o, cfg, &res)
	}
	return json.NewEncoder(out).Encode(res)
}

func clientConfig(o options) (*tls.Config, error) {
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no PEM certificates", o.ca)
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, err
	}
	name := o.serverName
	if name == "" {
		host, _, err := net.SplitHostPort(o.addr)
		if err != nil {
			return nil, fmt.Errorf("-addr: %w", err)
		}
		name = host
	}
	// No ClientSessionCache: every handshake is a full one.
	return &tls.Config{
		RootCAs:      pool,
		Certificates: []tls.Certificate{pair},
		ServerName:   name,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// dialPing opens a TLS connection, completes the handshake and exchanges one
// PING. The deadline is cleared before returning.
func dialPing(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := nc.(*tls.Conn)
	if err := ping(c, time.Now().Add(timeout)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func ping(c *tls.Conn, deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.Write(pingCmd); err != nil {
		return fmt.Errorf("write PING: %w", err)
	}
	var buf [len("+PONG\r\n")]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return fmt.Errorf("read PONG: %w", err)
	}
	if !bytes.Equal(buf[:], pongReply) {
		return fmt.Errorf("unexpected reply %q", buf[:])
	}
	return c.SetDeadline(time.Time{})
}

func idlePhase(o options, cfg *tls.Config, res *Result) {
	time.Sleep(o.settle)
	res.RSSBeforeKiB = readStatusKiB(o.pid, "VmRSS")
	fmt.Fprintf(os.Stderr, "scale: %s: opening %d connections (RSS before %d KiB)\n", o.label, o.conns, res.RSSBeforeKiB)

	conns := make([]*tls.Conn, o.conns)
	var (
		errCount atomic.Int64
		firstErr sync.Once
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range min(o.dialConcurrency, o.conns) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				c, err := dialPing(context.Background(), o.addr, cfg, o.timeout)
				if err != nil {
					errCount.Add(1)
					firstErr.Do(func() { res.ConnFirstError = err.Error() })
					continue
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	res.ConnErrors = int(errCount.Load())
	res.ConnsOpen = o.conns - res.ConnErrors

	time.Sleep(o.settle)
	res.RSSAfterKiB = readStatusKiB(o.pid, "VmRSS")
	res.HWMKiB = readStatusKiB(o.pid, "VmHWM")
	res.RSSBeforeMiB = float64(res.RSSBeforeKiB) / 1024
	res.RSSAfterMiB = float64(res.RSSAfterKiB) / 1024
	if res.ConnsOpen > 0 && res.RSSAfterKiB > 0 {
		res.PerConnKiB = float64(res.RSSAfterKiB-res.RSSBeforeKiB) / float64(res.ConnsOpen)
	}
	fmt.Fprintf(os.Stderr, "scale: %s: %d open, %d errors in %.1fs; RSS after %d KiB\n",
		o.label, res.ConnsOpen, res.ConnErrors, res.OpenSeconds, res.RSSAfterKiB)

	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	time.Sleep(o.settle)
	res.RSSClosedKiB = readStatusKiB(o.pid, "VmRSS")
}

func handshakePhase(o options, cfg *tls.Config, res *Result) {
	fmt.Fprintf(os.Stderr, "scale: %s: handshakes for %s with %d workers\n", o.label, o.hsDuration, o.workers)
	var (
		count, errCount atomic.Int64
		firstErr        sync.Once
		wg              sync.WaitGroup
	)
	lat := make([][]time.Duration, o.workers)
	cpu0 := readCPUTicks(o.pid)
	start := time.Now()
	end := start.Add(o.hsDuration)
	// Attempts cut short by the end of the phase are not errors: they fail
	// at or after end (the dial deadline), and are recognised by the clock
	// rather than ctx.Err(), which may not be set yet at that instant.
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	for w := range o.workers {
		wg.Go(func() {
			for time.Now().Before(end) {
				t0 := time.Now()
				c, err := dialPing(ctx, o.addr, cfg, o.timeout)
				if err != nil {
					if time.Now().Before(end) {
						errCount.Add(1)
						firstErr.Do(func() { res.HandshakeFirstError = err.Error() })
					}
					continue
				}
				c.Close()
				lat[w] = append(lat[w], time.Since(t0))
				count.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1 := readCPUTicks(o.pid)

	res.HandshakeSeconds = elapsed.Seconds()
	res.Handshakes = count.Load()
	res.HandshakeErrors = errCount.Load()
	res.HandshakesPerSec = float64(res.Handshakes) / elapsed.Seconds()
	all := slices.Concat(lat...)
	slices.Sort(all)
	res.HandshakeP50Ms = quantileMs(all, 0.50)
	res.HandshakeP99Ms = quantileMs(all, 0.99)
	if res.Handshakes > 0 && cpu0 >= 0 && cpu1 >= cpu0 {
		res.CPUUsPerHandshake = float64(cpu1-cpu0) * (1e6 / userHZ) / float64(res.Handshakes)
	}
	fmt.Fprintf(os.Stderr, "scale: %s: %.0f handshakes/s (%d errors)\n", o.label, res.HandshakesPerSec, res.HandshakeErrors)
}

// quantileMs returns the nearest-rank quantile q of sorted durations in ms.
func quantileMs(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

// readStatusKiB returns a "kB" field of /proc/PID/status, or 0.
func readStatusKiB(pid int, field string) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		v, _ := strconv.ParseInt(f[0], 10, 64)
		return v
	}
	return 0
}

// readCPUTicks returns utime+stime of all threads of pid in USER_HZ ticks,
// or -1 when unavailable.
func readCPUTicks(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may contain spaces; fields after the last
	// ')' start at field 3 (state), so utime (14) and stime (15) are at
	// indexes 11 and 12.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return ut + st
}
