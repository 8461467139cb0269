package commands

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
	"github.com/tlsproxy/tlsproxy/proxy/commands/internal/gen"
)

// startRedis starts a redis-server for a test, or skips the test when
// redis-server is not installed.
func startRedis(t *testing.T) *testredis.Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skipf("redis-server is not on PATH (%v): this test compares the table and parsers with a real Redis; `make test` installs it", err)
	}
	return testredis.Start(t, testredis.Options{})
}

// dial opens a connection to srv, closed when the test ends.
func dial(t *testing.T, srv *testredis.Server) *gen.Client {
	t.Helper()
	c, err := gen.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// do runs a command that must succeed.
func do(t *testing.T, c *gen.Client, args ...string) any {
	t.Helper()
	v, err := c.Do(args...)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return v
}

// byteArgs turns a command line into arguments; words are separated by
// single spaces.
func byteArgs(line string) [][]byte {
	var args [][]byte
	for _, w := range strings.Split(line, " ") {
		args = append(args, []byte(w))
	}
	return args
}
