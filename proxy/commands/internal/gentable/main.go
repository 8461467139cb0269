// Command gentable writes the commands package's table_gen.go from the
// metadata of a real redis-server (COMMAND and COMMAND DOCS).
//
// Without -addr it starts a throw-away redis-server from PATH, the way the
// tests do; with -addr it reads the server there instead.
//
//	go run ./internal/gentable -out table_gen.go            (what go generate runs)
//	go run ./internal/gentable -addr 127.0.0.1:6379 -out -  (print it)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/commands/internal/gen"
)

func main() {
	addr := flag.String("addr", "", "host:port (or /path of a unix socket) of a redis-server to read; empty starts one")
	out := flag.String("out", "table_gen.go", "file to write; - for standard output")
	flag.Parse()
	if err := run(*addr, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gentable:", err)
		os.Exit(1)
	}
}

func run(addr, out string) (err error) {
	if addr == "" {
		t := &processTB{}
		defer t.cleanup()
		defer func() {
			switch r := recover().(type) {
			case nil:
			case fatal:
				err = fmt.Errorf("start redis-server: %s", string(r))
			default:
				panic(r)
			}
		}()
		addr = testredis.Start(t, testredis.Options{}).Addr
	}
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := gen.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	m, err := gen.Load(c)
	if err != nil {
		return err
	}
	src, err := gen.Source(m)
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = os.Stdout.Write(src)
		return err
	}
	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, src) {
		return nil
	}
	return os.WriteFile(out, src, 0o644)
}

// processTB lets testredis, which is written for tests, start a server for
// this command: Start calls only Helper, TempDir, Cleanup and Fatalf, so
// the embedded testing.TB stays nil.
type processTB struct {
	testing.TB
	cleanups []func()
}

// fatal carries Fatalf's message out of testredis.Start.
type fatal string

func (t *processTB) Helper()          {}
func (t *processTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

func (t *processTB) Fatalf(format string, args ...any) {
	panic(fatal(fmt.Sprintf(format, args...)))
}

func (t *processTB) TempDir() string {
	dir, err := os.MkdirTemp("", "gentable")
	if err != nil {
		t.Fatalf("create a temporary directory: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// cleanup runs the registered cleanups, last first, as testing does.
func (t *processTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
