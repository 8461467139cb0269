package resp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/internal/testredis"
)

// Test access to the reader's internals.

// bufferCap is the capacity of the reader's buffer, 0 while it holds none.
func (r *RequestReader) bufferCap() int {
	if r.b == nil {
		return 0
	}
	return cap(r.b.data)
}

const (
	defaultMaxBulk = 512 << 20
	errTooLarge    = "(too large)" // readOutcome's name for ErrRequestTooLarge
)

// outcome is everything a reader made of a stream.
type outcome struct {
	reqs [][]string // the arguments of each request
	raws []string
	err  string // "EOF", errTooLarge or a protocol error's text
}

func (o outcome) String() string {
	return fmt.Sprintf("reqs=%q err=%q", o.reqs, o.err)
}

// readOutcome reads r until it fails and records what it returned.
func readOutcome(t testing.TB, r *RequestReader) outcome {
	t.Helper()
	var o outcome
	for {
		reqs, err := r.Read()
		o.add(reqs)
		if err != nil {
			o.err = errText(t, err)
			return o
		}
		if len(reqs) == 0 {
			t.Fatal("Read returned no request and no error")
		}
	}
}

func (o *outcome) add(reqs []Request) {
	for _, q := range reqs {
		args := make([]string, len(q.Args))
		for i, a := range q.Args {
			args[i] = string(a)
		}
		o.reqs = append(o.reqs, args)
		o.raws = append(o.raws, string(q.Raw))
	}
}

func errText(t testing.TB, err error) string {
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		return pe.Msg
	case errors.Is(err, ErrRequestTooLarge):
		return errTooLarge
	case err == io.EOF:
		return "EOF"
	}
	t.Fatalf("unexpected error %v", err)
	return ""
}

func reqArgs(a ...string) []string { return a }

// requestCases are parsed whole, byte by byte and split at every offset.
// err "" means the stream simply ends (io.EOF), possibly inside a request.
var requestCases = []struct {
	name string
	in   string
	want [][]string
	err  string
}{
	{"multibulk", "*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n", [][]string{reqArgs("ECHO", "abc")}, ""},
	{"pipelined", "*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", [][]string{reqArgs("PING"), reqArgs("GET", "k")}, ""},
	{"empty bulk", "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [][]string{reqArgs("ECHO", "")}, ""},
	{"binary bulk", "*1\r\n$5\r\na\x00\r\nb\r\n", [][]string{reqArgs("a\x00\r\nb")}, ""},
	{"body not followed by CRLF", "*1\r\n$3\r\nfooXY", [][]string{reqArgs("foo")}, ""},
	{"bytes after header CR", "*1\rX$4\rYPING\r\n", [][]string{reqArgs("PING")}, ""},
	{"LF only after count is part of the count", "*1\n$4\r\nPING\r\n", nil, "Protocol error: invalid multibulk length"},
	{"partial multibulk", "*2\r\n$4\r\nECHO\r\n$3\r\nab", nil, ""},
	{"header CR without the next byte", "*1\r", nil, ""},
	{"bulk header CR without the next byte", "*1\r\n$4\r", nil, ""},
	{"body without its 2 trailing bytes", "*1\r\n$4\r\nPING\r", nil, ""},

	{"*0 ignored", "*0\r\n*1\r\n$4\r\nPING\r\n", [][]string{reqArgs("PING")}, ""},
	{"*-1 ignored", "*-1\r\n*1\r\n$4\r\nPING\r\n", [][]string{reqArgs("PING")}, ""},
	{"most negative count ignored", "*-9223372036854775808\r\n", nil, ""},
	{"empty line ignored", "\r\n\n   \r\n\t\v\f\r\nPING\r\n", [][]string{reqArgs("PING")}, ""},

	{"count overflows int64", "*9223372036854775808\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count above INT_MAX", "*2147483648\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count int64 max", "*9223372036854775807\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count leading zero", "*01\r\n$4\r\nPING\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count plus sign", "*+1\r\n$4\r\nPING\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count -0", "*-0\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count empty", "*\r\n", nil, "Protocol error: invalid multibulk length"},
	{"count space", "*1 \r\n", nil, "Protocol error: invalid multibulk length"},
	{"count 21 digits", "*000000000000000000001\r\n", nil, "Protocol error: invalid multibulk length"},
	{"bulk length int64 max", "*1\r\n$9223372036854775807\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length overflows", "*1\r\n$99999999999999999999\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length plus sign", "*1\r\n$+4\r\nPING\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length leading zeros", "*1\r\n$004\r\nPING\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length negative", "*1\r\n$-1\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length empty", "*1\r\n$\r\n", nil, "Protocol error: invalid bulk length"},
	{"bulk length above proto-max-bulk-len", "*1\r\n$536870913\r\n", nil, "Protocol error: invalid bulk length"},
	{"not a bulk", "*1\r\n:4\r\n", nil, "Protocol error: expected '$', got ':'"},
	{"not a bulk: CR", "*1\r\n\r\n", nil, "Protocol error: expected '$', got ' '"},
	{"not a bulk: LF", "*1\r\n\n\r\n", nil, "Protocol error: expected '$', got ' '"},
	{"not a bulk: high byte", "*1\r\n\xff\r\n", nil, "Protocol error: expected '$', got '\xff'"},
	{"not a bulk waits for CR", "*1\r\nPING", nil, ""},
	{"requests before the error", "PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n*1\r\n$4\r\nPING\r\n",
		[][]string{reqArgs("PING"), reqArgs("PING")}, "Protocol error: invalid bulk length"},
	{"NUL stops the count search", "*1\x00\r\n$4\r\nPING\r\n", nil, ""},
	{"NUL stops the bulk header search", "*1\r\n$4\x00\r\nPING\r\n", nil, ""},

	{"inline", "ECHO hello\r\n", [][]string{reqArgs("ECHO", "hello")}, ""},
	{"inline LF only", "ECHO hello\nPING\n", [][]string{reqArgs("ECHO", "hello"), reqArgs("PING")}, ""},
	{"inline only one CR stripped", "ECHO a\r\r\n", [][]string{reqArgs("ECHO", "a")}, ""},
	{"inline CR separates", "ECHO a\rb\r\n", [][]string{reqArgs("ECHO", "a", "b")}, ""},
	{"inline tabs", "ECHO\ta\t\tb\r\n", [][]string{reqArgs("ECHO", "a", "b")}, ""},
	{"inline VT and FF do not split", "ECHO a\vb\fc\r\n", [][]string{reqArgs("ECHO", "a\vb\fc")}, ""},
	{"inline VT skipped between args", "\vECHO \v\fa\r\n", [][]string{reqArgs("ECHO", "a")}, ""},
	{"inline high bytes are not spaces", "ECHO\xa0x \x85\r\n", [][]string{reqArgs("ECHO\xa0x", "\x85")}, ""},
	{"inline hex escape", `ECHO "a\x41b"` + "\r\n", [][]string{reqArgs("ECHO", "aAb")}, ""},
	{"inline short hex escape", `ECHO "a\x4"` + "\r\n", [][]string{reqArgs("ECHO", "ax4")}, ""},
	{"inline bad hex escape", `ECHO "\xZZ"` + "\r\n", [][]string{reqArgs("ECHO", "xZZ")}, ""},
	{"inline escapes", `ECHO "\n\r\t\b\a\\\"\q"` + "\r\n", [][]string{reqArgs("ECHO", "\n\r\t\b\a\\\"q")}, ""},
	{"inline single quotes", `ECHO 'a\nb' 'it\'s' '"'` + "\r\n", [][]string{reqArgs("ECHO", `a\nb`, "it's", `"`)}, ""},
	{"inline quote inside word", `ECHO a"b c"` + "\r\n", [][]string{reqArgs("ECHO", "ab c")}, ""},
	{"inline empty quoted", `ECHO "" ''` + "\r\n", [][]string{reqArgs("ECHO", "", "")}, ""},
	{"inline quote then VT", "ECHO \"a\"\v\"b\"\r\n", [][]string{reqArgs("ECHO", "a", "b")}, ""},
	{"inline quote then CR", "ECHO \"a\"\rb\r\n", [][]string{reqArgs("ECHO", "a", "b")}, ""},
	{"inline text after closing quote", `ECHO "a"b` + "\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline text after closing single quote", `ECHO 'a'b` + "\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline unterminated", `ECHO "abc` + "\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline unterminated single", `ECHO 'abc` + "\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline newline ends a quote", "ECHO 'a\nb'\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline trailing backslash", `ECHO "a\` + "\r\n", nil, "Protocol error: unbalanced quotes in request"},
	{"inline CR inside quotes", "ECHO \"a\rb\"\r\n", [][]string{reqArgs("ECHO", "a\rb")}, ""},
	{"inline NUL waits", "PI\x00NG\r\nPING\r\n", nil, ""},
	{"inline partial", "PIN", nil, ""},
	{"inline then multibulk", "PING\r\n*1\r\n$4\r\nPING\r\n", [][]string{reqArgs("PING"), reqArgs("PING")}, ""},
}

// splitReader returns the stream in the pieces given.
func splitReader(pieces ...string) io.Reader {
	rs := make([]io.Reader, len(pieces))
	for i, p := range pieces {
		rs[i] = strings.NewReader(p)
	}
	return io.MultiReader(rs...)
}

func TestRequestCases(t *testing.T) {
	for _, tc := range requestCases {
		t.Run(tc.name, func(t *testing.T) {
			wantErr := tc.err
			if wantErr == "" {
				wantErr = "EOF"
			}
			want := outcome{reqs: tc.want, err: wantErr}
			check := func(how string, src io.Reader) {
				t.Helper()
				got := readOutcome(t, NewRequestReader(src, 1<<20, defaultMaxBulk))
				got.raws = nil
				if got.String() != want.String() {
					t.Fatalf("%s:\n got %v\nwant %v", how, got, want)
				}
			}
			check("whole", strings.NewReader(tc.in))
			check("byte by byte", &oddReader{strings.NewReader(tc.in), 1})
			for i := 1; i < len(tc.in); i++ {
				check("split at "+strconv.Itoa(i), splitReader(tc.in[:i], tc.in[i:]))
			}
		})
	}
}

func TestRequestRaw(t *testing.T) {
	for _, tc := range requestCases {
		o := readOutcome(t, NewRequestReader(strings.NewReader(tc.in), 1<<20, defaultMaxBulk))
		rest := tc.in
		for i, raw := range o.raws {
			if tc.in[0] == '*' {
				// A multibulk request is forwarded exactly as received.
				j := strings.Index(rest, raw)
				if j < 0 || !strings.HasPrefix(raw, "*") {
					t.Errorf("%s: Raw %q is not the next bytes of the input", tc.name, raw)
					continue
				}
				rest = rest[j+len(raw):]
			}
			// Every Raw parses back to the same arguments.
			back := readOutcome(t, NewRequestReader(strings.NewReader(raw), 1<<20, defaultMaxBulk))
			if len(back.reqs) != 1 || fmt.Sprint(back.reqs[0]) != fmt.Sprint(o.reqs[i]) || back.err != "EOF" {
				t.Errorf("%s: Raw %q parses to %v, want %q", tc.name, raw, back, o.reqs[i])
			}
		}
	}
	o := readOutcome(t, NewRequestReader(strings.NewReader("SET k 'a b'\r\n"), 1<<20, defaultMaxBulk))
	if want := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n"; len(o.raws) != 1 || o.raws[0] != want {
		t.Errorf("inline Raw = %q, want %q", o.raws, want)
	}
}

func TestParseRequestLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1", 1, true},
		{"-1", -1, true},
		{"512", 512, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true},
		{"9223372036854775808", 0, false},
		{"-9223372036854775809", 0, false},
		{"18446744073709551615", 0, false},
		{"18446744073709551616", 0, false},
		{"99999999999999999999", 0, false},
		{"100000000000000000000", 0, false},
		{"", 0, false},
		{"-", 0, false},
		{"-0", 0, false},
		{"00", 0, false},
		{"01", 0, false},
		{"+1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1a", 0, false},
		{"0x10", 0, false},
	} {
		got, ok := ParseInt([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseInt(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestLineLimits checks the 64 KiB limit on lines that Redis searches for
// their end: the verdict is the one Redis gives when bytes arrive one by one.
func TestLineLimits(t *testing.T) {
	long := strings.Repeat("a", maxLine)
	digits := strings.Repeat("1", maxLine)
	for _, tc := range []struct {
		name string
		in   string
		want [][]string
		err  string
	}{
		{"inline of 64 KiB", long + "\n", [][]string{reqArgs(long)}, "EOF"},
		{"inline of 64 KiB with CR", long[1:] + "\r\n", [][]string{reqArgs(long[1:])}, "EOF"},
		{"inline without LF in 64 KiB + 1", long + "a", nil, "Protocol error: too big inline request"},
		{"inline LF after 64 KiB + 1", long + "a\n", nil, "Protocol error: too big inline request"},
		{"inline NUL", "a\x00" + long + "\n", nil, "Protocol error: too big inline request"},
		{"count CR at 64 KiB", "*" + digits[1:] + "\rX", nil, "Protocol error: invalid multibulk length"},
		{"count CR after 64 KiB", "*" + digits + "\r\n", nil, "Protocol error: too big mbulk count string"},
		{"count NUL", "*1\x00" + digits + "\r\n", nil, "Protocol error: too big mbulk count string"},
		{"bulk header CR at 64 KiB", "*1\r\n$" + digits[1:] + "\rX", nil, "Protocol error: invalid bulk length"},
		{"bulk header CR after 64 KiB", "*1\r\n$" + digits + "\r\n", nil, "Protocol error: too big bulk count string"},
		{"bulk header without CR waits", "*1\r\n$" + digits[1:], nil, "EOF"},
		{"not a bulk, no CR", "*1\r\n" + long + "a", nil, "Protocol error: too big bulk count string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := outcome{reqs: tc.want, err: tc.err}.String()
			for _, n := range []int{1, 7, 4096, len(tc.in)} {
				got := readOutcome(t, NewRequestReader(&oddReader{strings.NewReader(tc.in), n}, 1<<20, defaultMaxBulk))
				if got.String() != want {
					t.Fatalf("%d bytes per read: got %.200v, want %.200v", n, got, want)
				}
			}
		})
	}
}

// redisCases are checked against redis-server besides requestCases. A line
// that Redis gives up on must end far past 64 KiB: Redis reads as much as its
// (doubling) buffer holds and only then looks for the end, so it finds an end
// that arrives in the same read.
var redisCases = []string{
	strings.Repeat("a", 300_000),
	"*" + strings.Repeat("1", 300_000),
	"*1\r\n$" + strings.Repeat("1", 300_000),
	"ECHO " + strings.Repeat("b", maxLine-6) + "\r\n",
	"ECHO \"\\x00\" 'x'\r\n",
	"*3\r\n$4\r\nECHO\r\n$1\r\na\r\n$1\r\nb\r\n",
	"*1\r\n$4\r\nPINGXX*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n",
	"*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n*1\r\n$4\r\nPI",
	// Redis reads a bulk of 32 KiB or more into a buffer of its own.
	"*2\r\n$4\r\nECHO\r\n$40000\r\n" + strings.Repeat("v", 40000) + "XY",
	"*2\r\n$4\r\nECHO\r\n$40000\r\n" + strings.Repeat("v", 40000) + "\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n",
}

// TestRequestsMatchRedis sends each case, then a PING, to a real
// redis-server, closes the write side and collects what Redis answers until
// it closes the connection. The parser's verdict on the same stream must
// produce exactly that: the replies Redis gives to the requests it returned
// (each Raw forwarded on a second connection, as the proxy would) followed,
// on a protocol error, by "-ERR "+text.
func TestRequestsMatchRedis(t *testing.T) {
	srv := testredis.Start(t, testredis.Options{})
	var cases []string
	for _, tc := range requestCases {
		cases = append(cases, tc.in)
	}
	for _, in := range append(cases, redisCases...) {
		stream := in + "*1\r\n$4\r\nPING\r\n"
		o := readOutcome(t, NewRequestReader(strings.NewReader(stream), 1<<20, defaultMaxBulk))
		want := redisReplies(t, srv.Addr, strings.Join(o.raws, ""))
		switch o.err {
		case "EOF":
		case errTooLarge:
			t.Fatalf("%.40q: request too large for the test's limit", in)
		default:
			want = append(want, "-ERR "+o.err+"\r\n"...)
		}
		if got := redisReplies(t, srv.Addr, stream); !bytes.Equal(got, want) {
			t.Errorf("%.60q: Redis answered\n%.300q\nthe parser's verdict (%.200v) gives\n%.300q", in, got, o, want)
		}
	}
}

// TestMutatedRequestsMatchRedis is TestRequestsMatchRedis on the cases with
// a few random bytes changed, inserted or removed.
func TestMutatedRequestsMatchRedis(t *testing.T) {
	srv := testredis.Start(t, testredis.Options{})
	const alphabet = "*$\r\n\r\n0123456789-+ \t\v\"'\\xaA\x00\xff"
	rng := rand.New(rand.NewPCG(1, 2))
	checked := 0
	for range 600 {
		in := []byte(requestCases[rng.IntN(len(requestCases))].in)
		for range 1 + rng.IntN(3) {
			i := rng.IntN(len(in) + 1)
			c := alphabet[rng.IntN(len(alphabet))]
			switch op := rng.IntN(3); {
			case op == 0 && i < len(in):
				in[i] = c
			case op == 1 && i < len(in):
				in = append(in[:i], in[i+1:]...)
			default:
				in = append(in[:i], append([]byte{c}, in[i:]...)...)
			}
		}
		stream := string(in) + "*1\r\n$4\r\nPING\r\n"
		o := readOutcome(t, NewRequestReader(strings.NewReader(stream), 1<<20, defaultMaxBulk))
		if o.err == errTooLarge || slices.ContainsFunc(o.reqs, isHello) {
			continue // Redis would wait for the rest; HELLO's reply has the connection's id
		}
		want := redisReplies(t, srv.Addr, strings.Join(o.raws, ""))
		if o.err != "EOF" {
			want = append(want, "-ERR "+o.err+"\r\n"...)
		}
		if got := redisReplies(t, srv.Addr, stream); !bytes.Equal(got, want) {
			t.Errorf("%q: Redis answered\n%.300q\nthe parser's verdict (%.200v) gives\n%.300q", in, got, o, want)
		}
		checked++
	}
	t.Logf("%d mutated streams checked", checked)
}

func isHello(args []string) bool { return strings.EqualFold(args[0], "hello") }

// redisReplies writes stream to Redis at addr, closes the write side and
// returns everything Redis sends until it closes the connection.
func redisReplies(t *testing.T, addr, stream string) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	written := make(chan struct{})
	go func() {
		defer close(written)
		// Redis may close the connection before it has read everything.
		_, _ = io.WriteString(conn, stream)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(conn)
	<-written
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read Redis's replies: %v", err)
	}
	return out
}

// failReader fails the test if it is read.
type failReader struct{ t testing.TB }

func (f failReader) Read([]byte) (int, error) {
	f.t.Error("read past a request known to be too large")
	return 0, io.ErrUnexpectedEOF
}

func TestRequestTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		limit int
		want  [][]string
	}{
		{"bulk beyond limit", "*1\r\n$100\r\n", 100, nil},
		{"bulk and trailer beyond limit", "*1\r\n$4\r\n", 13, nil},
		{"arguments left beyond limit", "*3\r\n$1\r\n", 20, nil},
		{"count beyond limit", "*2147483647\r\n", 512 << 20, nil},
		{"huge bulk", "*2\r\n$3\r\nSET\r\n$536870912\r\n", 1 << 20, nil},
		{"after complete requests", "PING\r\n*1\r\n$100\r\n", 100, [][]string{reqArgs("PING")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := io.MultiReader(strings.NewReader(tc.in), failReader{t})
			got := readOutcome(t, NewRequestReader(src, tc.limit, defaultMaxBulk))
			if want := (outcome{reqs: tc.want, err: errTooLarge}); got.String() != want.String() {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	// Exactly the limit fits.
	in := "*1\r\n$4\r\nPING\r\n"
	got := readOutcome(t, NewRequestReader(strings.NewReader(in), len(in), defaultMaxBulk))
	if want := (outcome{reqs: [][]string{reqArgs("PING")}, err: "EOF"}); got.String() != want.String() {
		t.Fatalf("request of exactly the limit: got %v, want %v", got, want)
	}
	// A line whose size is unknown fails when the limit is buffered.
	for _, in := range []string{strings.Repeat("a", 100), "*1\r\n$" + strings.Repeat("1", 100)} {
		got := readOutcome(t, NewRequestReader(&oddReader{strings.NewReader(in), 3}, 50, defaultMaxBulk))
		if got.err != errTooLarge || len(got.reqs) != 0 {
			t.Errorf("%.10q... with limit 50: got %v, want %s", in, got, errTooLarge)
		}
	}
}

func TestErrorsAreSticky(t *testing.T) {
	r := NewRequestReader(strings.NewReader("PING\r\n*1\r\n$x\r\nPING\r\n"), 1<<20, defaultMaxBulk)
	reqs, err := r.Read()
	var pe *ProtocolError
	if len(reqs) != 1 || !errors.As(err, &pe) || pe.Msg != "Protocol error: invalid bulk length" {
		t.Fatalf("Read = %d requests, %v; want PING and invalid bulk length", len(reqs), err)
	}
	for range 2 {
		if reqs, err2 := r.Read(); len(reqs) != 0 || err2 != err {
			t.Fatalf("Read after a protocol error = %d requests, %v; want the same error", len(reqs), err2)
		}
		if err2 := r.Fill(); err2 != err {
			t.Fatalf("Fill after a protocol error = %v; want the same error", err2)
		}
	}
}

// stepReader returns its pieces one per Read and io.EOF after the last; it
// records the size of every buffer it is handed.
type stepReader struct {
	pieces []string
	sizes  []int
}

func (s *stepReader) Read(p []byte) (int, error) {
	s.sizes = append(s.sizes, len(p))
	if len(s.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.pieces[0])
	if s.pieces[0] = s.pieces[0][n:]; s.pieces[0] == "" {
		s.pieces = s.pieces[1:]
	}
	return n, nil
}

func TestFillKeepsRequests(t *testing.T) {
	src := &stepReader{pieces: []string{
		"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$",
		"3\r\nabc\r\n",
		strings.Repeat("*1\r\n$4\r\nPING\r\n", 3000), // more than the pooled buffer holds
	}}
	r := NewRequestReader(src, 1<<20, defaultMaxBulk)
	reqs, err := r.Read()
	if err != nil || len(reqs) != 1 {
		t.Fatalf("Read = %d requests, %v", len(reqs), err)
	}
	first := reqs[0]
	for {
		if err := r.Fill(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("Fill: %v", err)
		}
	}
	if string(first.Raw) != "*1\r\n$4\r\nPING\r\n" || string(first.Args[0]) != "PING" {
		t.Fatalf("Fill changed the last Read's request: %q", first.Raw)
	}
	o := readOutcome(t, r)
	if len(o.reqs) != 3001 || fmt.Sprint(o.reqs[0]) != "[ECHO abc]" || o.err != "EOF" {
		t.Fatalf("after Fill: %d requests, first %q, err %s", len(o.reqs), o.reqs[:1], o.err)
	}
}

// TestAfter: what follows a request (the requests parsed after it, an
// inline one re-encoded, and the bytes not parsed yet, also after a Fill that
// moved them to a larger buffer) is handed over whole and in order.
func TestAfter(t *testing.T) {
	tail := strings.Repeat("x", 40<<10) // makes Fill grow the buffer
	src := &stepReader{pieces: []string{
		"SYNC\r\n*1\r\n$4\r\nPING\r\n*0\r\nECHO a\r\n*2\r\n$4\r\nEC",
		tail,
	}}
	r := NewRequestReader(src, 1<<20, defaultMaxBulk)
	reqs, err := r.Read()
	if err != nil || len(reqs) != 3 || string(reqs[0].Args[0]) != "SYNC" {
		t.Fatalf("Read = %q, %v", reqs, err)
	}
	for {
		if err := r.Fill(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("Fill: %v", err)
		}
	}
	want := "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\na\r\n*2\r\n$4\r\nEC" + tail
	if got := string(r.After(reqs[0])); got != want {
		t.Fatalf("After(SYNC) = %.80q..., want %.80q...", got, want)
	}
	if got := string(r.After(reqs[2])); got != "*2\r\n$4\r\nEC"+tail {
		t.Fatalf("After(the last request) = %.40q...", got)
	}
}

func TestFillBufferFull(t *testing.T) {
	r := NewRequestReader(&stepReader{pieces: []string{"PING\r\nPI", "NG\r\nPING\r\nPING\r\nPING\r\n"}}, 16, defaultMaxBulk)
	if reqs, err := r.Read(); err != nil || len(reqs) != 1 {
		t.Fatalf("Read = %d requests, %v", len(reqs), err)
	}
	if err := r.Fill(); err != nil {
		t.Fatalf("Fill = %v", err)
	}
	// "PING\r\nPING\r\nPING", the limit of 16 bytes, is buffered.
	if err := r.Fill(); err != ErrBufferFull {
		t.Fatalf("Fill with the limit buffered = %v, want ErrBufferFull", err)
	}
	if reqs, err := r.Read(); err != nil || len(reqs) != 2 {
		t.Fatalf("Read after Fill = %d requests, %v", len(reqs), err)
	}
}

func TestEOFComesWithRequests(t *testing.T) {
	r := NewRequestReader(strings.NewReader("PING\r\nPI"), 1<<20, defaultMaxBulk)
	for i := 0; ; i++ {
		err := r.Fill()
		if err == io.EOF {
			break
		}
		if err != nil || i == 3 {
			t.Fatalf("Fill %d = %v, want io.EOF by the third", i, err)
		}
	}
	if reqs, err := r.Read(); err != io.EOF || len(reqs) != 1 {
		t.Fatalf("Read = %d requests, %v; want 1 and io.EOF", len(reqs), err)
	}
	if reqs, err := r.Read(); err != io.EOF || len(reqs) != 0 {
		t.Fatalf("Read again = %d requests, %v; want io.EOF", len(reqs), err)
	}
}

// timeoutReader returns a timeout before each read of its pieces.
type timeoutReader struct {
	pieces   []string
	timedOut bool
}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }

func (r *timeoutReader) Read(p []byte) (int, error) {
	if len(r.pieces) == 0 {
		return 0, io.EOF
	}
	if r.timedOut = !r.timedOut; r.timedOut {
		return 0, timeoutError{}
	}
	n := copy(p, r.pieces[0])
	if r.pieces[0] = r.pieces[0][n:]; r.pieces[0] == "" {
		r.pieces = r.pieces[1:]
	}
	return n, nil
}

func TestTimeoutIsNotTheEnd(t *testing.T) {
	r := NewRequestReader(&timeoutReader{pieces: []string{"P", "ING\r\n", "PING\r\n", "PING\r\n"}}, 1<<20, defaultMaxBulk)
	var got []string
	for _, step := range []string{"Read", "Read", "Read", "Fill", "Fill", "Read", "Read"} {
		var err error
		n := 0
		if step == "Read" {
			var reqs []Request
			reqs, err = r.Read()
			n = len(reqs)
		} else {
			err = r.Fill()
		}
		got = append(got, fmt.Sprintf("%s:%d:%v", step, n, err))
	}
	want := []string{
		"Read:0:i/o timeout", "Read:0:i/o timeout", "Read:1:<nil>",
		"Fill:0:i/o timeout", "Fill:0:<nil>", "Read:1:<nil>", "Read:0:i/o timeout",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if reqs, err := r.Read(); len(reqs) != 0 || err == nil || err.Error() != "i/o timeout" {
		t.Fatalf("Read = %d requests, %v; want another timeout", len(reqs), err)
	}
	if reqs, err := r.Read(); len(reqs) != 1 || err != nil {
		t.Fatalf("Read after the timeouts = %d requests, %v", len(reqs), err)
	}
}

func TestIdleReaderHoldsNoBuffer(t *testing.T) {
	src := &stepReader{pieces: []string{"*1\r\n$4\r\nPING\r\n"}}
	r := NewRequestReader(src, 1<<20, defaultMaxBulk)
	if r.bufferCap() != 0 {
		t.Fatal("a new reader holds a buffer")
	}
	read := func(want int) {
		t.Helper()
		if reqs, err := r.Read(); err != nil || len(reqs) != want {
			t.Fatalf("Read = %d requests, %v; want %d", len(reqs), err, want)
		}
	}
	read(1)
	r.Release()
	if r.bufferCap() != 0 {
		t.Fatal("the reader holds a buffer after Release")
	}

	// A partial request keeps the buffer.
	src.pieces = []string{"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI"}
	read(1)
	r.Release()
	if r.bufferCap() == 0 {
		t.Fatal("Release dropped a partial request")
	}
	src.pieces = []string{"NG\r\n"}
	read(1)
	r.Release()
	if r.bufferCap() != 0 {
		t.Fatal("the reader holds a buffer after Release")
	}

	// Waiting for a request, here past an ignored one, the reader reads one
	// byte before it takes a buffer, and drops the buffer once it has parsed
	// everything.
	src.pieces, src.sizes = []string{"*0\r\n", "PING\r\n"}, nil
	read(1)
	if s := src.sizes; len(s) < 3 || s[0] != 1 || s[1] < readSize-1 || s[2] != 1 {
		t.Fatalf("read sizes %v: want 1 byte, the rest of a pooled buffer, then 1 byte", s)
	}
}

// commandStream generates count copies of cmd, split into reads that each end
// one byte past a command boundary after every commands/read commands.
type commandStream struct {
	cmd       string
	count     int // commands still to generate, whole or in part
	off       int // bytes of the current command already returned
	perRead   int // commands per read
	readBytes int // bytes left in the current read
	onRead    func()
}

func (s *commandStream) Read(p []byte) (int, error) {
	if s.onRead != nil {
		s.onRead()
	}
	if s.count == 0 {
		return 0, io.EOF
	}
	if s.readBytes == 0 {
		s.readBytes = s.perRead * len(s.cmd)
	}
	p = p[:min(len(p), s.readBytes)]
	n := 0
	for n < len(p) && s.count > 0 {
		c := copy(p[n:], s.cmd[s.off:])
		n += c
		if s.off += c; s.off == len(s.cmd) {
			s.off = 0
			s.count--
		}
	}
	s.readBytes -= n
	return n, nil
}

func TestMemoryFollowsRequests(t *testing.T) {
	const cmd = "*1\r\n$10\r\n0123456789\r\n" // 21 bytes
	for _, tc := range []struct{ perRead, megabytes int }{{1, 6}, {7, 6}, {700, 60}, {3000, 60}} {
		t.Run(strconv.Itoa(tc.perRead), func(t *testing.T) {
			var r *RequestReader
			peak := 0
			total := tc.megabytes << 20 / len(cmd)
			src := &commandStream{cmd: cmd, count: total, perRead: tc.perRead}
			// Start one byte past the first boundary, and then per read.
			src.readBytes = len(cmd) + 1
			src.onRead = func() { peak = max(peak, r.bufferCap()) }
			r = NewRequestReader(src, 65536, defaultMaxBulk)
			got := 0
			for {
				reqs, err := r.Read()
				for _, q := range reqs {
					if string(q.Raw) != cmd {
						t.Fatalf("request %d = %q", got, q.Raw)
					}
				}
				got += len(reqs)
				peak = max(peak, r.bufferCap())
				r.Release()
				if err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
			}
			if got != total {
				t.Fatalf("got %d requests, want %d", got, total)
			}
			if peak > 128<<10 {
				t.Fatalf("buffer grew to %d bytes", peak)
			}
		})
	}
}

// bigValueReader yields "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$<n>\r\n", n bytes of
// a pattern and "\r\n".
type bigValueReader struct {
	head   string
	n, off int
	onRead func()
}

func (b *bigValueReader) Read(p []byte) (int, error) {
	b.onRead()
	total := len(b.head) + b.n + 2
	if b.off == total {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && b.off < total {
		switch {
		case b.off < len(b.head):
			p[n] = b.head[b.off]
		case b.off < len(b.head)+b.n:
			p[n] = bigValueByte(b.off - len(b.head))
		case b.off == total-2:
			p[n] = '\r'
		default:
			p[n] = '\n'
		}
		n++
		b.off++
	}
	return n, nil
}

func bigValueByte(i int) byte { return byte(i*7 + i>>13) }

func TestLargeBulk(t *testing.T) {
	const n = 64 << 20
	var r *RequestReader
	peak := 0
	src := &bigValueReader{
		head:   "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + strconv.Itoa(n) + "\r\n",
		n:      n,
		onRead: func() { peak = max(peak, r.bufferCap()) },
	}
	r = NewRequestReader(src, 512<<20, defaultMaxBulk)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	reqs, err := r.Read()
	runtime.ReadMemStats(&after)
	if err != nil || len(reqs) != 1 || len(reqs[0].Args) != 3 {
		t.Fatalf("Read = %d requests, %v", len(reqs), err)
	}
	v := reqs[0].Args[2]
	if len(v) != n {
		t.Fatalf("value of %d bytes, want %d", len(v), n)
	}
	for i, c := range v {
		if c != bigValueByte(i) {
			t.Fatalf("value byte %d = %d, want %d", i, c, bigValueByte(i))
		}
	}
	if limit := n + n/10; peak > limit {
		t.Errorf("buffer grew to %d bytes for a %d-byte value", peak, n)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > n+n/10 {
		t.Errorf("Read allocated %d bytes for a %d-byte value", alloc, n)
	}
}

func TestReadAllocs(t *testing.T) {
	if poolDropsItems() {
		t.Skip("sync.Pool drops items (race detector): pooled buffers are reallocated")
	}
	for _, cmd := range []string{"*3\r\n$3\r\nSET\r\n$7\r\nkey:001\r\n$5\r\nvalue\r\n", "SET key:001 \"value\"\r\n"} {
		in := bytes.Repeat([]byte(cmd), 16)
		src := bytes.NewReader(in)
		r := NewRequestReader(src, 1<<20, defaultMaxBulk)
		allocs := testing.AllocsPerRun(100, func() {
			src.Reset(in)
			reqs, err := r.Read()
			if err != nil || len(reqs) != 16 {
				t.Fatalf("Read = %d requests, %v", len(reqs), err)
			}
			r.Release()
		})
		if allocs != 0 {
			t.Errorf("%q: %v allocations per Read", cmd, allocs)
		}
	}
}

// poolDropsItems reports whether sync.Pool drops what is Put, as it does at
// random under the race detector.
func poolDropsItems() bool {
	var p sync.Pool
	for range 100 {
		p.Put(new(int))
		if p.Get() == nil {
			return true
		}
	}
	return false
}

func BenchmarkRequestReader(b *testing.B) {
	var in []byte
	for i := range 16 {
		in = fmt.Appendf(in, "*3\r\n$3\r\nSET\r\n$7\r\nkey:%03d\r\n$5\r\nvalue\r\n", i)
	}
	src := bytes.NewReader(in)
	r := NewRequestReader(src, 1<<20, defaultMaxBulk)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		src.Reset(in)
		reqs, err := r.Read()
		if err != nil || len(reqs) != 16 {
			b.Fatalf("Read = %d requests, %v", len(reqs), err)
		}
		r.Release()
	}
}
