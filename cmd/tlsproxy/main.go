// Command tlsproxy is a RESP-aware mutual-TLS proxy in front of Redis.
//
// This file only parses flags, builds the typed config, calls the proxy package and
// handles signals; everything else lives under proxy/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/tlsproxy/tlsproxy/proxy"
	"github.com/tlsproxy/tlsproxy/proxy/checklist"
	"github.com/tlsproxy/tlsproxy/proxy/config"
	"github.com/tlsproxy/tlsproxy/proxy/tlsconf"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usageText = `tlsproxy: a RESP-aware mutual-TLS proxy in front of Redis.

Usage:
  tlsproxy [run] [--config FILE]            serve until SIGINT/SIGTERM (the default command)
  tlsproxy check [--config FILE] [--json] [--offline]
                                            validate the config, then run the production checklist
  tlsproxy health [--config FILE]           GET the admin endpoint's /healthz; exit 0 when healthy
  tlsproxy certs dev [--out DIR] [--force]  write a development CA, server and client certificate
  tlsproxy version                          print the version

Without --config, the defaults and TLSPROXY_* environment variables are used; variables
also override the file (e.g. TLSPROXY_UPSTREAM_URL, TLSPROXY_LISTEN_TLS_CERT_FILE).
Run 'tlsproxy COMMAND -h' for a command's flags.
`

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

// cli runs one command and returns the process exit code: 0 success, 1 failure,
// 2 usage error.
func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return runCmd(args, stdout, stderr)
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return 0
	case "run":
		return runCmd(args[1:], stdout, stderr)
	case "check":
		return checkCmd(args[1:], stdout, stderr)
	case "certs":
		return certsCmd(args[1:], stdout, stderr)
	case "version":
		return versionCmd(args[1:], stdout, stderr)
	case "health":
		return healthCmd(args[1:], stdout, stderr)
	}
	if strings.HasPrefix(args[0], "-") {
		// `tlsproxy --config f` is `tlsproxy run --config f`.
		return runCmd(args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "tlsproxy: unknown command %q\n\n%s", args[0], usageText)
	return 2
}

// command is one subcommand's flag set and usage line.
type command struct {
	fs    *flag.FlagSet
	usage string // e.g. "tlsproxy run [--config FILE]" plus a sentence
}

func newCommand(name, usage string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Errors and help are printed by parse, to the right stream.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &command{fs: fs, usage: usage}
}

func (c *command) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\nFlags:\n", c.usage)
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
}

// parse parses args; when it returns false the caller exits with code
// (0 after -h, 2 after a usage error).
func (c *command) parse(args []string, stdout, stderr io.Writer) (ok bool, code int) {
	err := c.fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		c.printUsage(stdout)
		return false, 0
	}
	if err == nil && c.fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", c.fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(stderr, "tlsproxy %s: %v\n\n", c.fs.Name(), err)
		c.printUsage(stderr)
		return false, 2
	}
	return true, 0
}

func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "YAML config `file`; empty means defaults plus TLSPROXY_* environment variables")
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("run", "tlsproxy [run] [--config FILE]\n\nServes until SIGINT or SIGTERM, then drains (in-flight commands finish, every\nconnection closes, within shutdown_timeout) and exits 0; a second signal exits at once.\nSIGHUP (or a change to a certificate, key, CA or password file) reloads them.")
	path := configFlag(cmd.fs)
	if ok, code := cmd.parse(args, stdout, stderr); !ok {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	srv, err := proxy.New(cfg, log)
	if err != nil {
		log.Error().Err(err).Str("config", *path).Msg("cannot start")
		return 1
	}

	srv.SetVersion(version)

	// A log destination that goes away (a closed stderr pipe) must not take
	// the proxy down: writes to it fail instead of raising SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore default handling so a second one ends a
	// drain at once.
	stopping := make(chan struct{})
	context.AfterFunc(ctx, func() {
		sdNotify("STOPPING=1")
		stop()
		close(stopping)
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go newReloader(*path, srv, cfg, log).run(ctx, hup)
	go func() {
		select {
		case <-srv.Listening():
			sdNotify("READY=1")
		case <-ctx.Done():
		}
	}()

	log.Info().Str("version", version).Str("config", *path).Int("gomaxprocs", setMaxProcs()).Msg("starting")
	// ListenAndServe logs its own "stopped" event after a clean shutdown.
	if err := srv.ListenAndServe(ctx); err != nil {
		log.Error().Err(err).Msg("stopped with error")
		return 1
	}
	if ctx.Err() != nil {
		<-stopping // STOPPING=1 is out before the process exits, however fast the drain
	}
	return 0
}

func checkCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("check", "tlsproxy check [--config FILE] [--json] [--offline]\n\n"+
		"Validates the config and loads every certificate and key (exit 1 when tlsproxy run would\n"+
		"not start), then runs the production checklist: client authentication, TLS version, cipher\n"+
		"suites, server certificate, client CA bundle, upstream link, Redis reachable, Redis exposure,\n"+
		"secret file modes and admin endpoint. Prints one line per item, PASS, WARN, FAIL or SKIP\n"+
		"with the reason, and exits 1 when any item FAILs, 0 otherwise.")
	path := configFlag(cmd.fs)
	asJSON := cmd.fs.Bool("json", false, "print the checklist as a JSON array of {item, status, reason}")
	offline := cmd.fs.Bool("offline", false, "skip the items that connect to Redis (reported as SKIP)")
	if ok, code := cmd.parse(args, stdout, stderr); !ok {
		return code
	}
	cfg, ok := loadConfig(*path, stderr)
	if !ok {
		return 1
	}
	if _, err := proxy.New(cfg, zerolog.Nop()); err != nil {
		fmt.Fprintf(stderr, "tlsproxy: %v\n", err)
		return 1
	}
	results := checklist.Run(context.Background(), cfg, checklist.Options{Offline: *offline})
	failed := checklist.Failed(results)
	code := 0
	if failed {
		code = 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			fmt.Fprintf(stderr, "tlsproxy: %v\n", err)
			return 1
		}
		return code
	}
	counts := map[string]int{}
	for _, r := range results {
		counts[r.Status]++
		fmt.Fprintf(stdout, "%s  %s: %s\n", strings.ToUpper(r.Status), r.Item, r.Reason)
	}
	target, _ := cfg.Upstream.Target() // already checked by Load
	verdict := "configuration OK"
	if failed {
		verdict = "configuration loads, but the production checklist FAILs"
	}
	fmt.Fprintf(stdout, "tlsproxy: %s: listen %s (client_auth %s, TLS >= %s) -> %s; %d pass, %d warn, %d fail, %d skip\n",
		verdict, cfg.Listen.Address, cfg.Listen.TLS.ClientAuth, cfg.Listen.TLS.MinVersion, target,
		counts[checklist.Pass], counts[checklist.Warn], counts[checklist.Fail], counts[checklist.Skip])
	return code
}

func certsCmd(args []string, stdout, stderr io.Writer) int {
	const certsUsage = "Usage: tlsproxy certs dev [--out DIR] [--force]\n\n" +
		"Writes a development CA and a server and client certificate. Never use them in production.\n" +
		"Run 'tlsproxy certs dev -h' for the flags.\n"
	if len(args) == 0 {
		fmt.Fprintf(stderr, "tlsproxy certs: missing subcommand\n\n%s", certsUsage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, certsUsage)
		return 0
	case "dev":
	default:
		fmt.Fprintf(stderr, "tlsproxy certs: unknown subcommand %q\n\n%s", args[0], certsUsage)
		return 2
	}

	cmd := newCommand("certs dev", "tlsproxy certs dev [--out DIR] [--force]\n\n"+
		"Writes ca.crt, ca.key, server.crt, server.key (localhost, 127.0.0.1, ::1), client.crt and\n"+
		"client.key (CN dev-client) for development. Never use them in production.")
	out := cmd.fs.String("out", "certs/dev", "`directory` to write the certificates and keys to")
	force := cmd.fs.Bool("force", false, "overwrite existing files")
	if ok, code := cmd.parse(args[1:], stdout, stderr); !ok {
		return code
	}
	if err := tlsconf.WriteDev(*out, *force); err != nil {
		fmt.Fprintf(stderr, "tlsproxy certs dev: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "tlsproxy: wrote development certificates to %s (ca, server for localhost/127.0.0.1/::1, client CN=dev-client)\n", *out)
	return 0
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	cmd := newCommand("version", "tlsproxy version\n\nPrints the tlsproxy version and the Go version it was built with.")
	if ok, code := cmd.parse(args, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintf(stdout, "tlsproxy %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return 0
}

// loadConfig loads and validates the config, printing problems one per line: the
// logger's format is itself configured, so it cannot report them.
func loadConfig(path string, stderr io.Writer) (config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, "tlsproxy: configuration error:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "  %s\n", line)
		}
		return config.Config{}, false
	}
	return cfg, true
}

// newLogger builds the process logger: JSON lines by default, or a human-readable
// console format. cfg was validated, so the level parses.
func newLogger(cfg config.Log, w io.Writer) zerolog.Logger {
	setLogLevel(cfg)
	if cfg.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(w).With().Timestamp().Logger()
}

// setLogLevel sets log.level, process-wide, so that a reload can change it.
func setLogLevel(cfg config.Log) {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	zerolog.SetGlobalLevel(level)
}

// setMaxProcs lets the proxy use half the CPUs Go would use (at least one),
// unless GOMAXPROCS is set. tlsproxy runs next to Redis, and both are mostly
// system calls: on a 2-core machine with Redis and the load generator, one P
// instead of two raised throughput at one command per round trip from about
// 0.65x to 0.85-1.0x of Redis's own TLS and cut p99 latency by a third
// (bench/ANALYSIS.md): goroutines hand work to each other on one thread
// instead of waking and spinning threads that take CPU from Redis.
func setMaxProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := max(1, runtime.GOMAXPROCS(0)/2)
	runtime.GOMAXPROCS(n)
	return n
}
