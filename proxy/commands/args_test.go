package commands

import (
	"errors"
	"github.com/tlsproxy/tlsproxy/proxy/resp"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tlsproxy/tlsproxy/proxy/commands/internal/gen"
)

var helloTests = []struct {
	args    []string
	want    HelloOptions
	errText string
}{
	{[]string{"HELLO"}, HelloOptions{}, ""},
	{[]string{"HELLO", "3"}, HelloOptions{Proto: 3}, ""},
	{[]string{"hello", "2"}, HelloOptions{Proto: 2}, ""},
	{[]string{"HELLO", "4"}, HelloOptions{}, "NOPROTO unsupported protocol version"},
	{[]string{"HELLO", "1"}, HelloOptions{}, "NOPROTO unsupported protocol version"},
	{[]string{"HELLO", "-3"}, HelloOptions{}, "NOPROTO unsupported protocol version"},
	{[]string{"HELLO", "-9223372036854775808"}, HelloOptions{}, "NOPROTO unsupported protocol version"},
	{[]string{"HELLO", "03"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "+3"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "-0"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", " 3"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "3\x00"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "x"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", ""}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "9223372036854775808"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "AUTH", "default", "p"}, HelloOptions{}, "ERR Protocol version is not an integer or out of range"},
	{[]string{"HELLO", "3", "AUTH", "default", "p"}, HelloOptions{Proto: 3, HasAuth: true, User: []byte("default"), Pass: []byte("p")}, ""},
	{[]string{"HELLO", "2", "auth", "default", "p", "setname", "n"}, HelloOptions{Proto: 2, HasAuth: true, User: []byte("default"), Pass: []byte("p"), SetName: []byte("n")}, ""},
	{[]string{"HELLO", "3", "AUTH\x00x", "default", "p"}, HelloOptions{Proto: 3, HasAuth: true, User: []byte("default"), Pass: []byte("p")}, ""},
	{[]string{"HELLO", "3", "SETNAME", ""}, HelloOptions{Proto: 3, SetName: []byte{}}, ""},
	{[]string{"HELLO", "3", "SETNAME", "a", "SETNAME", "b"}, HelloOptions{Proto: 3, SetName: []byte("b")}, ""},
	{[]string{"HELLO", "3", "SETNAME"}, HelloOptions{Proto: 3}, "ERR Syntax error in HELLO option 'SETNAME'"},
	{[]string{"HELLO", "3", "AUTH", "default"}, HelloOptions{Proto: 3}, "ERR Syntax error in HELLO option 'AUTH'"},
	{[]string{"HELLO", "3", "SETNAME", "n", "FOO"}, HelloOptions{Proto: 3, SetName: []byte("n")}, "ERR Syntax error in HELLO option 'FOO'"},
	{[]string{"HELLO", "3", "AUTH", "default", "p", "FOO"}, HelloOptions{Proto: 3, HasAuth: true, User: []byte("default"), Pass: []byte("p")}, "ERR Syntax error in HELLO option 'FOO'"},
	{[]string{"HELLO", "3", "FO\r\nO"}, HelloOptions{Proto: 3}, "ERR Syntax error in HELLO option 'FO  O'"},
	{[]string{"HELLO", "3", "FOO\x00BAR"}, HelloOptions{Proto: 3}, "ERR Syntax error in HELLO option 'FOO'"},
	{[]string{"HELLO", "3", "SETNAME", "a b"}, HelloOptions{Proto: 3}, "ERR Client names cannot contain spaces, newlines or special characters."},
	{[]string{"HELLO", "3", "SETNAME", "caf\xc3\xa9"}, HelloOptions{Proto: 3}, "ERR Client names cannot contain spaces, newlines or special characters."},
}

func TestParseHello(t *testing.T) {
	for _, tt := range helloTests {
		h, errText := ParseHello(stringArgs(tt.args))
		if !reflect.DeepEqual(h, tt.want) || errText != tt.errText {
			t.Errorf("ParseHello(%q) = %+v, %q; want %+v, %q", tt.args, h, errText, tt.want, tt.errText)
		}
	}
}

// TestParseHelloMatchesRedis sends every HELLO of helloTests to Redis,
// which must answer ParseHello's error, or succeed when there is none.
func TestParseHelloMatchesRedis(t *testing.T) {
	srv := startRedis(t)
	for _, tt := range helloTests {
		c := dial(t, srv)
		_, errText := ParseHello(stringArgs(tt.args))
		_, err := c.Do(tt.args...)
		checkSameError(t, tt.args, err, errText)
		c.Close()
	}
}

var trackingTests = []struct {
	line    string // "ME" stands for the connection's own client id
	want    Tracking
	errText string
}{
	{"CLIENT TRACKING", Tracking{}, "ERR wrong number of arguments for 'client|tracking' command"},
	{"CLIENT TRACKING on", Tracking{On: true}, ""},
	{"client tracking OFF", Tracking{}, ""},
	{"CLIENT TRACKING on\x00x", Tracking{On: true}, ""},
	{"CLIENT TRACKING maybe", Tracking{}, "ERR syntax error"},
	{"CLIENT TRACKING on REDIRECT ME", Tracking{On: true, HasRedirect: true}, ""},
	{"CLIENT TRACKING on redirect 999999", Tracking{On: true, HasRedirect: true, Redirect: 999999}, ""},
	{"CLIENT TRACKING off REDIRECT 999999", Tracking{HasRedirect: true, Redirect: 999999}, ""},
	{"CLIENT TRACKING on REDIRECT x", Tracking{}, "ERR value is not an integer or out of range"},
	{"CLIENT TRACKING on REDIRECT", Tracking{}, "ERR syntax error"},
	{"CLIENT TRACKING on REDIRECT ME REDIRECT ME", Tracking{HasRedirect: true}, "ERR A client can only redirect to a single other client"},
	{"CLIENT TRACKING on REDIRECT 999999 FOO", Tracking{HasRedirect: true, Redirect: 999999}, "ERR syntax error"},
	{"CLIENT TRACKING on FOO REDIRECT 999999", Tracking{}, "ERR syntax error"},
	{"CLIENT TRACKING on BCAST PREFIX a PREFIX b", Tracking{On: true, BCast: true, Prefixes: 2}, ""},
	{"CLIENT TRACKING on PREFIX a", Tracking{On: true, Prefixes: 1}, "ERR PREFIX option requires BCAST mode to be enabled"},
	{"CLIENT TRACKING on PREFIX", Tracking{}, "ERR syntax error"},
	{"CLIENT TRACKING on BCAST OPTIN", Tracking{On: true, BCast: true, OptIn: true}, "ERR OPTIN and OPTOUT are not compatible with BCAST"},
	{"CLIENT TRACKING on optin OPTOUT", Tracking{On: true, OptIn: true, OptOut: true}, "ERR You can't specify both OPTIN mode and OPTOUT mode"},
	{"CLIENT TRACKING off OPTIN OPTOUT BCAST PREFIX a", Tracking{OptIn: true, OptOut: true, BCast: true, Prefixes: 1}, ""},
	{"CLIENT TRACKING on NOLOOP optout", Tracking{On: true, NoLoop: true, OptOut: true}, ""},
	{"CLIENT TRACKING on REDIRECT ME BCAST NOLOOP", Tracking{On: true, HasRedirect: true, BCast: true, NoLoop: true}, ""},
}

// trackingArgs replaces ME by id in a tracking test's line.
func trackingArgs(line string, id int64) [][]byte {
	return byteArgs(strings.ReplaceAll(line, "ME", strconv.FormatInt(id, 10)))
}

func TestParseTracking(t *testing.T) {
	const me = 7
	for _, tt := range trackingTests {
		want := tt.want
		if strings.Contains(tt.line, "REDIRECT ME") {
			want.Redirect = me
		}
		got, errText := ParseTracking(trackingArgs(tt.line, me))
		if got != want || errText != tt.errText {
			t.Errorf("ParseTracking(%q) = %+v, %q; want %+v, %q", tt.line, got, errText, want, tt.errText)
		}
	}
}

// TestParseTrackingMatchesRedis sends every CLIENT TRACKING of
// trackingTests to Redis on a fresh connection. A caller of ParseTracking
// that knows which client ids exist (here: only the connection's own)
// reports what Redis reports.
func TestParseTrackingMatchesRedis(t *testing.T) {
	srv := startRedis(t)
	for _, tt := range trackingTests {
		c := dial(t, srv)
		id := do(t, c, "CLIENT", "ID").(int64)
		args := trackingArgs(tt.line, id)
		tr, errText := ParseTracking(args)
		if tr.HasRedirect && tr.Redirect != id {
			errText = "ERR The client ID you want redirect to does not exist"
		}
		_, err := c.Do(stringsOf(args)...)
		checkSameError(t, stringsOf(args), err, errText)
		c.Close()
	}
}

var replyTests = []struct {
	line    string
	want    ReplyMode
	errText string
}{
	{"CLIENT REPLY ON", ReplyOn, ""},
	{"client reply off", ReplyOff, ""},
	{"CLIENT REPLY Skip", ReplySkip, ""},
	{"CLIENT REPLY OFF\x00x", ReplyOff, ""},
	{"CLIENT REPLY maybe", ReplyOn, "ERR syntax error"},
	{"CLIENT REPLY", ReplyOn, "ERR wrong number of arguments for 'client|reply' command"},
	{"CLIENT REPLY ON x", ReplyOn, "ERR wrong number of arguments for 'client|reply' command"},
}

func TestParseReply(t *testing.T) {
	for _, tt := range replyTests {
		m, errText := ParseReply(byteArgs(tt.line))
		if m != tt.want || errText != tt.errText {
			t.Errorf("ParseReply(%q) = %d, %q; want %d, %q", tt.line, m, errText, tt.want, tt.errText)
		}
	}
}

// TestParseReplyMatchesRedis checks the errors (a valid CLIENT REPLY OFF
// gets no reply at all).
func TestParseReplyMatchesRedis(t *testing.T) {
	srv := startRedis(t)
	c := dial(t, srv)
	for _, tt := range replyTests {
		args := strings.Split(tt.line, " ")
		_, errText := ParseReply(stringArgs(args))
		if errText == "" {
			continue
		}
		_, err := c.Do(args...)
		checkSameError(t, args, err, errText)
	}
}

func TestParseInt(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"7", 7, true},
		{"-7", -7, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true},
		{"9223372036854775808", 0, false},
		{"-9223372036854775809", 0, false},
		{"18446744073709551616", 0, false},
		{"99999999999999999999", 0, false},
		{"-0", 0, false},
		{"00", 0, false},
		{"07", 0, false},
		{"+7", 0, false},
		{" 7", 0, false},
		{"7 ", 0, false},
		{"7\x00", 0, false},
		{"", 0, false},
		{"-", 0, false},
		{"1e3", 0, false},
	} {
		got, ok := resp.ParseInt([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("resp.ParseInt(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestXReadRouteMatchesRedis runs every XREAD and XREADGROUP of routeTests
// against Redis, on a stream with nothing new to read, and checks that
// Redis blocked only where Classify says Blocking, and that Blocking
// without a block is always an error in Redis (malformed options).
func TestXReadRouteMatchesRedis(t *testing.T) {
	srv := startRedis(t)
	admin := dial(t, srv)
	do(t, admin, "XADD", "xs", "*", "f", "v")
	for _, g := range []string{"g", "streams", "block"} {
		do(t, admin, "XGROUP", "CREATE", "xs", g, "$")
	}
	lines := []string{"XREAD BLOCK\x00x 0 STREAMS xs $"}
	for _, tt := range routeTests {
		if name := strings.ToLower(strings.Fields(tt.line)[0]); name == "xread" || name == "xreadgroup" {
			lines = append(lines, tt.line)
		}
	}
	for _, line := range lines {
		args := strings.Split(line, " ")
		route := Classify(byteArgs(line))
		c := dial(t, srv)
		id := do(t, c, "CLIENT", "ID").(int64)
		if err := c.Send(args...); err != nil {
			t.Fatal(err)
		}
		blocked := waitUntilProcessed(t, admin, id, strings.ToLower(args[0]))
		var replyErr error
		if !blocked {
			_, replyErr = c.Receive()
		}
		c.Close()
		switch {
		case blocked && route != Blocking:
			t.Errorf("%q blocked in Redis, Classify says %s", line, route)
		case !blocked && route == Blocking && !errors.As(replyErr, new(gen.Error)):
			t.Errorf("%q is Blocking, but Redis answered it at once without an error", line)
		}
	}
}

// waitUntilProcessed waits until Redis has run command on the connection
// with the given id, and reports whether that connection is now blocked.
func waitUntilProcessed(t *testing.T, admin *gen.Client, id int64, command string) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		v := do(t, admin, "CLIENT", "LIST", "ID", strconv.FormatInt(id, 10))
		info, _ := v.(string)
		fields := map[string]string{}
		for _, f := range strings.Fields(info) {
			k, v, _ := strings.Cut(f, "=")
			fields[k] = v
		}
		if fields["cmd"] == command {
			return strings.Contains(fields["flags"], "b")
		}
	}
	t.Fatalf("connection %d did not run %s within 5s", id, command)
	return false
}

// checkSameError compares Redis's answer to args with the error a parser
// predicted ("" for none).
func checkSameError(t *testing.T, args []string, err error, want string) {
	t.Helper()
	var redisErr gen.Error
	switch {
	case errors.As(err, &redisErr):
		if string(redisErr) != want {
			t.Errorf("%q: Redis answered %q, the parser says %q", args, redisErr, want)
		}
	case err != nil:
		t.Fatalf("%q: %v", args, err)
	case want != "":
		t.Errorf("%q: Redis accepted it, the parser says %q", args, want)
	}
}

func stringArgs(args []string) [][]byte {
	b := make([][]byte, len(args))
	for i, a := range args {
		b[i] = []byte(a)
	}
	return b
}

func stringsOf(args [][]byte) []string {
	s := make([]string, len(args))
	for i, a := range args {
		s[i] = string(a)
	}
	return s
}
