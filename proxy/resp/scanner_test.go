package resp

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

type scanCase struct {
	name string
	in   string
	// replies and pushes are the complete replies and push frames in the
	// stream, as drain counts them (Scan, and ScanPush for each push).
	replies int
	pushes  int
	// left is the number of trailing bytes a valid case leaves unconsumed.
	left int
	// consumed is the number of bytes an invalid case consumes before the error.
	consumed int
	inReply  bool // expected InReply after draining (valid cases only)
	// stop, for a stream with a top-level push, is where a single Scan
	// stops: in front of the first push.
	stop *pushStop
}

// pushStop is where a single Scan stops in front of a push: at byte at,
// having completed replies replies.
type pushStop struct{ at, replies int }

// validCases are well-formed streams, complete or cut short.
var validCases = []scanCase{
	{name: "simple", in: "+OK\r\n", replies: 1},
	{name: "simple empty", in: "+\r\n", replies: 1},
	{name: "error", in: "-ERR unknown command 'foo'\r\n", replies: 1},
	{name: "integer", in: ":1000\r\n", replies: 1},
	{name: "integer negative", in: ":-42\r\n", replies: 1},
	{name: "integer plus", in: ":+7\r\n", replies: 1},
	{name: "bulk", in: "$5\r\nhello\r\n", replies: 1},
	{name: "bulk empty", in: "$0\r\n\r\n", replies: 1},
	{name: "bulk with CRLF inside", in: "$4\r\n\r\n\r\n\r\n", replies: 1},
	{name: "bulk null", in: "$-1\r\n", replies: 1},
	{name: "bulk length leading zeros", in: "$003\r\nfoo\r\n", replies: 1},
	{name: "array null", in: "*-1\r\n", replies: 1},
	{name: "array empty", in: "*0\r\n", replies: 1},
	{name: "array", in: "*3\r\n$3\r\nfoo\r\n:1\r\n$-1\r\n", replies: 1},
	{name: "null", in: "_\r\n", replies: 1},
	{name: "double", in: ",3.14159\r\n", replies: 1},
	{name: "double inf", in: ",-inf\r\n", replies: 1},
	{name: "boolean true", in: "#t\r\n", replies: 1},
	{name: "boolean false", in: "#f\r\n", replies: 1},
	{name: "big number", in: "(3492890328409238509324850943850943825024385\r\n", replies: 1},
	{name: "bulk error", in: "!21\r\nSYNTAX invalid syntax\r\n", replies: 1},
	{name: "verbatim", in: "=15\r\ntxt:Some string\r\n", replies: 1},
	{name: "map", in: "%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", replies: 1},
	{name: "map empty", in: "%0\r\n", replies: 1},
	{name: "set", in: "~3\r\n+a\r\n$1\r\nb\r\n:3\r\n", replies: 1},
	{
		name:    "attribute before reply",
		in:      "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
		replies: 1,
	},
	{name: "attribute empty", in: "|0\r\n+OK\r\n", replies: 1},
	{name: "attribute before bulk", in: "|1\r\n+ttl\r\n:3600\r\n$3\r\nval\r\n", replies: 1},
	// A push that an attribute decorates is the value of that reply.
	{name: "attribute before push", in: "|1\r\n+a\r\n+b\r\n>2\r\n+message\r\n+hi\r\n", replies: 1},
	{name: "attribute before null", in: "|1\r\n+a\r\n+b\r\n_\r\n", replies: 1},
	{name: "attribute inside array", in: "*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", replies: 1},
	{name: "attribute inside map value", in: "%1\r\n+k\r\n|1\r\n+a\r\n+b\r\n*1\r\n:1\r\n", replies: 1},
	{name: "nested attributes", in: "|1\r\n+a\r\n|1\r\n+x\r\n+y\r\n+b\r\n+value\r\n", replies: 1},
	{
		name:    "array of maps of arrays",
		in:      "*2\r\n%2\r\n+a\r\n*2\r\n:1\r\n:2\r\n+b\r\n*0\r\n%1\r\n$1\r\nc\r\n*1\r\n*1\r\n$-1\r\n",
		replies: 1,
	},
	{name: "deeply nested", in: "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n+deep\r\n", replies: 1},
	{name: "array of nulls", in: "*3\r\n*-1\r\n$-1\r\n_\r\n", replies: 1},

	// Line types hold anything up to CRLF: lone CRs and LFs, any text after
	// ':' '(' '_' '#', and any length.
	{name: "CR inside simple", in: "+a\rb\r\n", replies: 1},
	{name: "lone CRs", in: "+\r\r\r\n", replies: 1},
	{name: "CR before CRLF", in: "-ERR x\r\r\n", replies: 1},
	{name: "LF inside line", in: "-a\nb\n\r\n", replies: 1},
	{name: "integer with letters", in: ":12a\r\n", replies: 1},
	{name: "integer empty", in: ":\r\n", replies: 1},
	{name: "integer sign only", in: ":-\r\n", replies: 1},
	{name: "integer any bytes", in: ": \x00\xff\t\r\n", replies: 1},
	{name: "big number with point", in: "(1.5\r\n", replies: 1},
	{name: "null with text", in: "_x\r\n", replies: 1},
	{name: "boolean other", in: "#maybe\r\n", replies: 1},
	{name: "lines with CR in array", in: "*3\r\n+a\rb\r\n:x\r\n#\r\r\n", replies: 1},
	{name: "line at MaxLineLength", in: "+" + strings.Repeat("x", MaxLineLength-1) + "\r\n", replies: 1},
	{name: "line over MaxLineLength", in: "-" + strings.Repeat("x", MaxLineLength+10) + "\r\n", replies: 1},
	{
		name:    "header at MaxLineLength",
		in:      "*" + strings.Repeat("0", MaxLineLength-2) + "1\r\n:1\r\n",
		replies: 1,
	},

	// Push frames are not replies: Scan stops in front of a top-level one.
	{
		name:   "push",
		in:     ">4\r\n+pubsub\r\n+message\r\n+somechannel\r\n+this is the message\r\n",
		pushes: 1,
		stop:   &pushStop{at: 0, replies: 0},
	},
	{
		name:    "multiple replies",
		in:      "+OK\r\n:1\r\n$-1\r\n*1\r\n+x\r\n>1\r\n+p\r\n",
		replies: 4,
		pushes:  1,
		stop:    &pushStop{at: 22, replies: 4},
	},
	{
		name:    "push then reply",
		in:      ">2\r\n+message\r\n$2\r\nhi\r\n+OK\r\n",
		replies: 1,
		pushes:  1,
		stop:    &pushStop{at: 0, replies: 0},
	},
	{name: "empty push", in: ">0\r\n", pushes: 1, stop: &pushStop{at: 0, replies: 0}},
	{name: "null push", in: ">-1\r\n", pushes: 1, stop: &pushStop{at: 0, replies: 0}},
	{name: "push in push", in: ">2\r\n+a\r\n>1\r\n+b\r\n", pushes: 1, stop: &pushStop{at: 0, replies: 0}},
	{name: "push with long line", in: ">1\r\n+" + strings.Repeat("p\r", 40000) + "\r\n", pushes: 1, stop: &pushStop{}},
	// A push nested in a reply is one of its elements.
	{name: "push in array", in: "*2\r\n>1\r\n+x\r\n:1\r\n", replies: 1},
	{name: "push in map", in: "%1\r\n>0\r\n>1\r\n_\r\n", replies: 1},

	// Incomplete streams: the scanner stops before an unfinished header line
	// of a length-prefixed type, and consumes partial lines and bulk bodies.
	{name: "partial line", in: "+OK", inReply: true},
	{name: "partial line CR", in: "+OK\r", inReply: true},
	{name: "partial line LF", in: "+OK\n", inReply: true},
	{name: "partial line CR then other", in: "+OK\rX", inReply: true},
	{name: "reply then partial line", in: "+OK\r\n:12", replies: 1, inReply: true},
	{name: "partial header", in: "$5", left: 2},
	{name: "partial header CR", in: "*2\r", left: 3},
	{name: "reply then partial header", in: "+OK\r\n$1", replies: 1, left: 2},
	{name: "partial header at MaxLineLength", in: "*" + strings.Repeat("0", MaxLineLength-1), left: MaxLineLength},
	{name: "partial array", in: "*2\r\n:1\r\n", inReply: true},
	{name: "partial bulk body", in: "$5\r\nhel", inReply: true},
	{name: "partial bulk CRLF", in: "$5\r\nhello\r", inReply: true},
	{name: "partial bulk of maxCount bytes", in: "$4611686018427387904\r\nab", inReply: true},
	{name: "attribute only", in: "|1\r\n+a\r\n+b\r\n", inReply: true},
	{name: "partial header in array", in: "*2\r\n:1\r\n$", left: 1, inReply: true},
	{name: "partial line in array", in: "*2\r\n:1\r\n:", inReply: true},
	{name: "partial push header", in: ">2\r", left: 3, stop: &pushStop{}},
	{name: "partial push", in: ">2\r\n+a\r\n+b", inReply: true, stop: &pushStop{}},
	{name: "reply then partial push", in: "+OK\r\n>1\r\n", replies: 1, inReply: true, stop: &pushStop{at: 5, replies: 1}},
}

var invalidCases = []scanCase{
	{name: "unknown type byte", in: "?x\r\n"},
	{name: "unknown type after reply", in: "+OK\r\n@x\r\n", replies: 1, consumed: 5},
	{name: "unknown type without newline", in: "x"},
	{name: "unknown type after push", in: ">1\r\n+p\r\n?", pushes: 1, consumed: 8},
	{name: "empty line", in: "\r\n"},
	{name: "LF only in length", in: "*1\n"},
	{name: "CR without LF in length", in: "*1\rX"},
	{name: "bare CR in bulk length", in: "$1\r2\r\n"},
	{name: "bad bulk length", in: "$abc\r\n"},
	{name: "empty bulk length", in: "$\r\n"},
	{name: "bulk length -2", in: "$-2\r\n"},
	{name: "bulk length -0", in: "$-0\r\n"},
	{name: "bulk length -01", in: "$-01\r\n"},
	{name: "bulk length plus", in: "$+1\r\n"},
	{name: "bulk length space", in: "$ 1\r\n"},
	{name: "bulk length overflow", in: "$99999999999999999999999\r\n"},
	{name: "bulk length over maxCount", in: "$4611686018427387905\r\n"},
	// Lengths whose digits overflow int64 on the way must not wrap around
	// to a null or to some other length.
	{name: "bulk length wraps negative", in: "$10000000000000000000\r\n"},
	{name: "bulk length wraps positive", in: "$20000000000000000000\r\nab"},
	{name: "array length wraps positive", in: "*20000000000000000000\r\n:1\r\n"},
	{name: "array length wraps with zeros", in: "*00020000000000000000000\r\n"},
	{name: "array length -2", in: "*-2\r\n"},
	{name: "array length bad", in: "*1x\r\n"},
	{name: "push length bad", in: ">x\r\n"},
	{name: "bad length inside push", in: ">2\r\n+a\r\n$x\r\n", consumed: 8},
	{name: "map length overflow", in: "%4611686018427387904\r\n"},
	{name: "nested aggregates too large", in: "*4611686018427387904\r\n*4611686018427387904\r\n", consumed: 22},
	{name: "null attribute", in: "|-1\r\n"},
	{name: "missing CRLF after bulk", in: "$3\r\nfooXY", consumed: 7},
	{name: "missing LF after bulk", in: "$3\r\nfoo\rX", consumed: 8},
	{name: "bulk too long for length", in: "$2\r\nfoo\r\n", consumed: 6},
	{name: "bulk in push not followed by CRLF", in: ">1\r\n$1\r\nab", consumed: 9},
	{name: "streamed string", in: "$?\r\n"},
	{name: "streamed array", in: "*?\r\n"},
	{name: "header too long", in: "*" + strings.Repeat("0", MaxLineLength) + "\r\n"},
	{name: "header too long incomplete", in: "$" + strings.Repeat("0", MaxLineLength)},
	{name: "error inside array", in: "*2\r\n:1\r\n?\r\n", consumed: 8},
}

// drain scans p as a proxy does: replies with Scan (at most max per call),
// and each push frame it stops in front of with ScanPush. It returns when
// neither makes progress: at the end of p, in front of an incomplete header
// line, or at an error.
func drain(s *Scanner, p []byte, max int) (consumed, replies, pushes int, err error) {
	for {
		if s.AtPush(p[consumed:]) {
			n, done, err := s.ScanPush(p[consumed:])
			consumed += n
			if done {
				pushes++
			}
			if err != nil || !done {
				return consumed, replies, pushes, err
			}
			continue
		}
		n, k, err := s.Scan(p[consumed:], max)
		consumed += n
		replies += k
		if err != nil || n == 0 {
			return consumed, replies, pushes, err
		}
	}
}

func TestScanTable(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			var s Scanner
			n, k, err := s.Scan(in, 0)
			if err != nil {
				t.Fatalf("Scan error: %v", err)
			}
			if tc.stop != nil {
				if n != tc.stop.at || k != tc.stop.replies {
					t.Fatalf("Scan = (%d, %d), want to stop in front of the push: (%d, %d)",
						n, k, tc.stop.at, tc.stop.replies)
				}
				if !s.AtPush(in[n:]) {
					t.Fatal("AtPush() = false where Scan stopped")
				}
				// Scan makes no progress in front of a push.
				if n2, k2, err := s.Scan(in[n:], 0); n2 != 0 || k2 != 0 || err != nil {
					t.Fatalf("Scan in front of a push = (%d, %d, %v), want (0, 0, nil)", n2, k2, err)
				}
			} else if want := len(in) - tc.left; n != want || k != tc.replies || s.InReply() != tc.inReply {
				t.Errorf("Scan = (%d, %d), InReply %v; want (%d, %d), InReply %v",
					n, k, s.InReply(), want, tc.replies, tc.inReply)
			}

			var d Scanner
			n, k, pushes, err := drain(&d, in, 0)
			if err != nil {
				t.Fatalf("drain error: %v", err)
			}
			if want := len(in) - tc.left; n != want || k != tc.replies || pushes != tc.pushes {
				t.Errorf("drain = (%d, %d replies, %d pushes), want (%d, %d, %d)",
					n, k, pushes, want, tc.replies, tc.pushes)
			}
			if d.InReply() != tc.inReply {
				t.Errorf("InReply() = %v, want %v", d.InReply(), tc.inReply)
			}
		})
	}
}

func TestScanInvalid(t *testing.T) {
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			var s Scanner
			n, k, pushes, err := drain(&s, in, 0)
			if err == nil {
				t.Fatalf("drain = (%d, %d, %d, nil), want error", n, k, pushes)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("error %v does not wrap ErrProtocol", err)
			}
			if n != tc.consumed || k != tc.replies || pushes != tc.pushes {
				t.Errorf("drain = (%d, %d replies, %d pushes), want (%d, %d, %d)",
					n, k, pushes, tc.consumed, tc.replies, tc.pushes)
			}
			// The error is sticky, for Scan and for ScanPush.
			if n2, k2, err2 := s.Scan([]byte("+OK\r\n"), 0); err2 == nil || n2 != 0 || k2 != 0 {
				t.Errorf("Scan after error = (%d, %d, %v), want sticky error", n2, k2, err2)
			}
			if p := []byte(">0\r\n"); s.AtPush(p) {
				if n2, done, err2 := s.ScanPush(p); err2 == nil || n2 != 0 || done {
					t.Errorf("ScanPush after error = (%d, %v, %v), want sticky error", n2, done, err2)
				}
			}
			// Byte-by-byte feeding reports the error too.
			var s2 Scanner
			if _, _, _, _, err := feed(&s2, chunksOf(in, 1)); err == nil {
				t.Errorf("byte-by-byte: no error")
			}
		})
	}
}

func TestStreamedTypeMessage(t *testing.T) {
	var s Scanner
	_, _, err := s.Scan([]byte("$?\r\n;4\r\nHell\r\n;0\r\n"), 0)
	if err == nil || !strings.Contains(err.Error(), "streamed types not supported") {
		t.Fatalf("err = %v, want streamed types not supported", err)
	}
}

func TestReset(t *testing.T) {
	var s Scanner
	if _, _, err := s.Scan([]byte("*2\r\n$10\r\nabc"), 0); err != nil {
		t.Fatal(err)
	}
	if !s.InReply() {
		t.Fatal("InReply() = false in the middle of a reply")
	}
	s.Reset()
	if s.InReply() {
		t.Fatal("InReply() = true after Reset")
	}
	if n, k, err := s.Scan([]byte("+OK\r\n"), 0); n != 5 || k != 1 || err != nil {
		t.Fatalf("Scan after Reset = (%d, %d, %v)", n, k, err)
	}
	// Reset also clears a protocol error.
	if _, _, err := s.Scan([]byte("?\r\n"), 0); err == nil {
		t.Fatal("no error")
	}
	s.Reset()
	if n, k, err := s.Scan([]byte(":1\r\n"), 0); n != 4 || k != 1 || err != nil {
		t.Fatalf("Scan after Reset = (%d, %d, %v)", n, k, err)
	}
	// Reset abandons a push in progress, and a line cut after its CR.
	if n, done, err := s.ScanPush([]byte(">2\r\n+a\r")); n != 7 || done || err != nil {
		t.Fatalf("ScanPush = (%d, %v, %v)", n, done, err)
	}
	s.Reset()
	if s.AtPush([]byte("\n")) {
		t.Fatal("AtPush() = true after Reset")
	}
	if n, k, err := s.Scan([]byte("+b\r\n"), 0); n != 4 || k != 1 || err != nil {
		t.Fatalf("Scan after Reset = (%d, %d, %v)", n, k, err)
	}
}

// feed scans chunks as a proxy would: bytes not consumed are kept and the
// next chunk is appended to them. It returns the concatenation of the
// consumed segments, the replies and pushes completed, and what is left.
func feed(s *Scanner, chunks [][]byte) (out []byte, replies, pushes int, left []byte, err error) {
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		n, k, p, err := drain(s, buf, 0)
		out = append(out, buf[:n]...)
		replies += k
		pushes += p
		buf = buf[n:]
		if err != nil {
			return out, replies, pushes, buf, err
		}
	}
	return out, replies, pushes, buf, nil
}

func chunksOf(p []byte, size int) [][]byte {
	var cs [][]byte
	for len(p) > 0 {
		n := min(size, len(p))
		cs = append(cs, p[:n])
		p = p[n:]
	}
	return cs
}

// completeCases returns the valid cases that end at a frame boundary.
func completeCases() []scanCase {
	var cs []scanCase
	for _, tc := range validCases {
		if tc.replies+tc.pushes > 0 && !tc.inReply && tc.left == 0 {
			cs = append(cs, tc)
		}
	}
	return cs
}

func multiStream() (stream []byte, replies, pushes int) {
	for _, tc := range completeCases() {
		if len(tc.in) > 1000 {
			continue
		}
		stream = append(stream, tc.in...)
		replies += tc.replies
		pushes += tc.pushes
	}
	return stream, replies, pushes
}

func TestSplitByteByByte(t *testing.T) {
	for _, tc := range completeCases() {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			var s Scanner
			out, k, pushes, left, err := feed(&s, chunksOf(in, 1))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, in) || len(left) != 0 {
				t.Errorf("consumed %.40q, left %.40q; want %.40q", out, left, in)
			}
			if k != tc.replies || pushes != tc.pushes {
				t.Errorf("replies, pushes = %d, %d; want %d, %d", k, pushes, tc.replies, tc.pushes)
			}
			if s.InReply() || s.AtPush(nil) {
				t.Error("InReply() or AtPush() true after complete frames")
			}
		})
	}
}

func TestSplitEverywhere(t *testing.T) {
	stream, replies, pushes := multiStream()
	for i := 0; i <= len(stream); i++ {
		var s Scanner
		out, k, p, left, err := feed(&s, [][]byte{stream[:i], stream[i:]})
		if err != nil {
			t.Fatalf("split at %d: %v", i, err)
		}
		if !bytes.Equal(out, stream) || len(left) != 0 {
			t.Fatalf("split at %d: consumed segments do not reassemble the input", i)
		}
		if k != replies || p != pushes {
			t.Fatalf("split at %d: replies, pushes = %d, %d; want %d, %d", i, k, p, replies, pushes)
		}
	}
	// Several chunk sizes, including ones that straddle many boundaries.
	for size := 1; size <= 64; size++ {
		var s Scanner
		out, k, p, left, err := feed(&s, chunksOf(stream, size))
		if err != nil || !bytes.Equal(out, stream) || len(left) != 0 || k != replies || p != pushes {
			t.Fatalf("chunk size %d: err=%v replies=%d/%d pushes=%d/%d equal=%v left=%d",
				size, err, k, replies, p, pushes, bytes.Equal(out, stream), len(left))
		}
	}
}

// TestLineCRAtChunkEnd cuts lines right after a CR: the CR is consumed and
// the scanner remembers it, whatever the next chunk starts with.
func TestLineCRAtChunkEnd(t *testing.T) {
	cases := []struct {
		chunks  []string
		replies int
	}{
		{[]string{"+OK\r", "\n"}, 1},
		{[]string{"+OK\r", "\n:1\r\n"}, 2},
		{[]string{"+", "\r", "\n"}, 1},
		{[]string{"-ERR a\r", "\r\n"}, 1},      // the first CR is content
		{[]string{"-ERR a\r", "b\r", "\n"}, 1}, // so is this one
		{[]string{"+a\r", "\r", "\r", "\n"}, 1},
		{[]string{"*2\r\n+a\r", "\n:b\r", "\n"}, 1},
		{[]string{">2\r\n+message\r", "\n+x\r", "\n+OK\r", "\n"}, 1},
	}
	for _, tc := range cases {
		var (
			s       Scanner
			buf     []byte
			replies int
		)
		for i, c := range tc.chunks {
			buf = append(buf, c...)
			n, k, _, err := drain(&s, buf, 0)
			if err != nil {
				t.Fatalf("%q: chunk %d: %v", tc.chunks, i, err)
			}
			if n != len(buf) {
				t.Fatalf("%q: chunk %d: consumed %d of %d", tc.chunks, i, n, len(buf))
			}
			buf = buf[:0]
			replies += k
			if i < len(tc.chunks)-1 && !s.InReply() && !s.AtPush(nil) {
				t.Fatalf("%q: chunk %d: scanner between frames inside a line", tc.chunks, i)
			}
		}
		if replies != tc.replies || s.InReply() || s.AtPush(nil) {
			t.Fatalf("%q: replies = %d (want %d), InReply %v, AtPush %v",
				tc.chunks, replies, tc.replies, s.InReply(), s.AtPush(nil))
		}
	}
}

// frameEnd marks where a top-level frame ends in a stream.
type frameEnd struct {
	end  int
	push bool
}

// frameEnds scans stream one byte at a time and returns where each frame ends.
func frameEnds(t *testing.T, stream []byte) []frameEnd {
	t.Helper()
	var (
		s    Scanner
		ends []frameEnd
		off  int
		buf  []byte
	)
	for _, c := range stream {
		buf = append(buf, c)
		n, k, pushes, err := drain(&s, buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		if k+pushes > 1 {
			t.Fatalf("one byte completed %d frames", k+pushes)
		}
		off += n
		buf = buf[n:]
		if k+pushes == 1 {
			ends = append(ends, frameEnd{off, pushes == 1})
		}
	}
	return ends
}

// TestPushSplitEverywhere feeds a push in two pieces, split at every byte:
// AtPush holds from its first byte to its last, Scan refuses to touch it, and
// ScanPush consumes it without counting a reply.
func TestPushSplitEverywhere(t *testing.T) {
	push := []byte(">4\r\n+message\r\n$2\r\nch\r\n*2\r\n:1\r\n+a\rb\r\n%1\r\n_\r\n>0\r\n")
	for i := 1; i <= len(push); i++ {
		var s Scanner
		buf := push[:i:i]
		if !s.AtPush(buf) {
			t.Fatalf("split at %d: AtPush() = false at the start of a push", i)
		}
		n, done, err := s.ScanPush(buf)
		if err != nil || done != (i == len(push)) {
			t.Fatalf("split at %d: ScanPush = (%d, %v, %v)", i, n, done, err)
		}
		if done {
			break
		}
		buf = buf[n:]
		if !s.AtPush(buf) {
			t.Fatalf("split at %d: AtPush() = false inside a push", i)
		}
		if n, k, err := s.Scan(append(buf, "+OK\r\n"...), 0); n != 0 || k != 0 || err != nil {
			t.Fatalf("split at %d: Scan inside a push = (%d, %d, %v), want (0, 0, nil)", i, n, k, err)
		}
		buf = append(buf, push[i:]...)
		n2, done, err := s.ScanPush(buf)
		if err != nil || !done || n+n2 != len(push) {
			t.Fatalf("split at %d: second ScanPush = (%d, %v, %v), total %d of %d",
				i, n2, done, err, n+n2, len(push))
		}
		if s.AtPush(nil) || s.InReply() {
			t.Fatalf("split at %d: AtPush or InReply after the push", i)
		}
	}
	// One byte at a time, with a reply after the push.
	stream := append(push[:len(push):len(push)], "+OK\r\n"...)
	want := []frameEnd{{len(push), true}, {len(stream), false}}
	if got := frameEnds(t, stream); !equalEnds(got, want) {
		t.Fatalf("byte-by-byte frames = %v, want %v", got, want)
	}
}

// TestPushInPipeline walks a pipeline of replies with pushes between them:
// Scan, then ScanPush, then Scan again.
func TestPushInPipeline(t *testing.T) {
	const (
		before = "+OK\r\n$3\r\nfoo\r\n"
		push   = ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
		middle = "*2\r\n:1\r\n>1\r\n+nested\r\n" // a nested push is an element
		inval  = ">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n"
		after  = "-ERR x\r\n"
	)
	stream := []byte(before + push + middle + push + inval + after)
	var s Scanner
	off := 0
	scan := func(wantN, wantK int) {
		t.Helper()
		n, k, err := s.Scan(stream[off:], 0)
		if n != wantN || k != wantK || err != nil {
			t.Fatalf("at %d: Scan = (%d, %d, %v), want (%d, %d, nil)", off, n, k, err, wantN, wantK)
		}
		off += n
	}
	scanPush := func(wantN int) {
		t.Helper()
		if !s.AtPush(stream[off:]) {
			t.Fatalf("at %d: AtPush() = false", off)
		}
		n, done, err := s.ScanPush(stream[off:])
		if n != wantN || !done || err != nil {
			t.Fatalf("at %d: ScanPush = (%d, %v, %v), want (%d, true, nil)", off, n, done, err, wantN)
		}
		off += n
	}
	// ScanPush where there is no push does nothing.
	if n, done, err := s.ScanPush(stream); n != 0 || done || err != nil {
		t.Fatalf("ScanPush in front of a reply = (%d, %v, %v)", n, done, err)
	}
	scan(len(before), 2)
	scan(0, 0) // still in front of the push
	scanPush(len(push))
	scan(len(middle), 1)
	scanPush(len(push))
	scan(0, 0)
	scanPush(len(inval))
	scan(len(after), 1)
	if off != len(stream) || s.InReply() || s.AtPush(nil) {
		t.Fatalf("stopped at %d of %d, InReply %v", off, len(stream), s.InReply())
	}

	// A push inside a reply is an element: ScanPush leaves it to Scan.
	s.Reset()
	if n, k, err := s.Scan([]byte("*2\r\n:1\r\n"), 0); n != 8 || k != 0 || err != nil {
		t.Fatalf("Scan = (%d, %d, %v)", n, k, err)
	}
	nested := []byte(">1\r\n+x\r\n")
	if s.AtPush(nested) {
		t.Fatal("AtPush() = true inside a reply")
	}
	if n, done, err := s.ScanPush(nested); n != 0 || done || err != nil {
		t.Fatalf("ScanPush inside a reply = (%d, %v, %v)", n, done, err)
	}
	if n, k, err := s.Scan(nested, 0); n != len(nested) || k != 1 || err != nil {
		t.Fatalf("Scan of the nested push = (%d, %d, %v)", n, k, err)
	}
}

// TestScanAfterPushError checks that an error met inside a push is sticky
// for Scan too, not only for ScanPush.
func TestScanAfterPushError(t *testing.T) {
	var s Scanner
	if _, _, err := s.ScanPush([]byte(">1\r\n?")); !errors.Is(err, ErrProtocol) {
		t.Fatalf("ScanPush err = %v, want ErrProtocol", err)
	}
	if n, k, err := s.Scan([]byte("+OK\r\n"), 0); n != 0 || k != 0 || !errors.Is(err, ErrProtocol) {
		t.Fatalf("Scan after a push error = (%d, %d, %v), want the sticky error", n, k, err)
	}
}

func TestMaxLimit(t *testing.T) {
	frames := []frameText{
		{"+OK\r\n", false},
		{">2\r\n+message\r\n+x\r\n", true},
		{"|1\r\n+a\r\n+b\r\n:1\r\n", false}, // attribute belongs to this reply
		{"$3\r\nfoo\r\n", false},
		{">2\r\n+invalidate\r\n*1\r\n$1\r\nk\r\n", true},
		{">0\r\n", true},
		{"*2\r\n%1\r\n+k\r\n+v\r\n>1\r\n_\r\n", false},
		{"+a\rb\r\n", false},
		{":7\r\n", false},
		{">1\r\n+tail\r\n", true},
	}
	var (
		stream   []byte
		wantEnds []frameEnd
		replies  int
	)
	for _, f := range frames {
		stream = append(stream, f.text...)
		wantEnds = append(wantEnds, frameEnd{len(stream), f.push})
		if !f.push {
			replies++
		}
	}
	if got := frameEnds(t, stream); !equalEnds(got, wantEnds) {
		t.Fatalf("byte-by-byte frames = %v, want %v", got, wantEnds)
	}

	isEnd := func(off int) bool {
		for _, e := range wantEnds {
			if e.end == off {
				return true
			}
		}
		return false
	}
	for max := 1; max <= replies+1; max++ {
		var s Scanner
		off, done, pushes := 0, 0, 0
		for off < len(stream) {
			if s.AtPush(stream[off:]) {
				n, ok, err := s.ScanPush(stream[off:])
				if err != nil || !ok {
					t.Fatalf("max=%d: ScanPush at %d = (%d, %v, %v)", max, off, n, ok, err)
				}
				off += n
				pushes++
				continue
			}
			n, k, err := s.Scan(stream[off:], max)
			if err != nil {
				t.Fatal(err)
			}
			if k > max {
				t.Fatalf("max=%d: completed %d replies", max, k)
			}
			if n == 0 {
				t.Fatalf("max=%d: no progress at %d", max, off)
			}
			off += n
			done += k
			if !isEnd(off) || s.InReply() {
				t.Fatalf("max=%d: stopped at %d, not a frame boundary", max, off)
			}
			if k < max && off < len(stream) && !s.AtPush(stream[off:]) {
				t.Fatalf("max=%d: stopped at %d after %d replies, not in front of a push", max, off, k)
			}
		}
		if done != replies || pushes != len(frames)-replies {
			t.Fatalf("max=%d: replies, pushes = %d, %d; want %d, %d",
				max, done, pushes, replies, len(frames)-replies)
		}
	}

	// max <= 0 means no limit: Scan stops only in front of the first push.
	for _, max := range []int{0, -1} {
		var s Scanner
		if n, k, err := s.Scan(stream, max); n != len(frames[0].text) || k != 1 || err != nil {
			t.Fatalf("max=%d: Scan = (%d, %d, %v)", max, n, k, err)
		}
		var d Scanner
		n, k, pushes, err := drain(&d, stream, max)
		if n != len(stream) || k != replies || pushes != len(frames)-replies || err != nil {
			t.Fatalf("max=%d: drain = (%d, %d, %d, %v)", max, n, k, pushes, err)
		}
	}
}

type frameText struct {
	text string
	push bool
}

func equalEnds(a, b []frameEnd) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// repeatReader yields text repeated endlessly.
type repeatReader struct {
	text string
	off  int
}

func (r *repeatReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = r.text[r.off]
		r.off++
		if r.off == len(r.text) {
			r.off = 0
		}
	}
	return len(b), nil
}

// bulkPattern is bulk body content full of CRLF and header-like bytes.
const bulkPattern = "0123456789\r\nabcdefghijklmnopqrstuvwxyz\r\n$*+-:\n\r"

// linePattern is line content with lone CRs and LFs, and no CR followed by
// LF, even where it repeats.
const linePattern = "line content\rwith a lone CR\nand LF\n\r"

// oddReader returns at most n bytes per Read to create unaligned splits.
type oddReader struct {
	r io.Reader
	n int
}

func (o *oddReader) Read(b []byte) (int, error) {
	if len(b) > o.n {
		b = b[:o.n]
	}
	return o.r.Read(b)
}

// scanWindow scans src through a fixed window as a proxy does, and returns
// the bytes, replies and pushes it consumed. After a read that leaves the
// scanner in a state for which streaming reports true, the whole window
// must have been consumed.
func scanWindow(t *testing.T, src io.Reader, window []byte, streaming func(*Scanner) bool) (consumed int64, replies, pushes int) {
	t.Helper()
	var (
		s    Scanner
		fill int
	)
	for {
		n, rerr := src.Read(window[fill:])
		fill += n
		c, k, p, err := drain(&s, window[:fill], 0)
		if err != nil {
			t.Fatal(err)
		}
		if streaming(&s) && c != fill {
			t.Fatalf("bytes not consumed as they arrived: %d of %d", c, fill)
		}
		consumed += int64(c)
		replies += k
		pushes += p
		fill = copy(window, window[c:fill])
		if fill == len(window) {
			t.Fatalf("window full after %d bytes, and no progress", consumed)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
	}
	if fill != 0 {
		t.Fatalf("left %d bytes", fill)
	}
	if s.InReply() || s.AtPush(nil) {
		t.Fatal("InReply() or AtPush() at end")
	}
	return consumed, replies, pushes
}

func TestLargeBulkThroughSmallWindow(t *testing.T) {
	const bodyLen = 64 << 20
	header := "$67108864\r\n"
	trailer := "\r\n+OK\r\n"
	total := int64(len(header) + bodyLen + len(trailer))
	src := &oddReader{
		r: io.MultiReader(
			strings.NewReader(header),
			io.LimitReader(&repeatReader{text: bulkPattern}, bodyLen),
			strings.NewReader(trailer),
		),
		n: 65521, // a prime, so reads straddle header, body and CRLF boundaries
	}
	var window [64 * 1024]byte
	consumed, replies, _ := scanWindow(t, src, window[:], func(s *Scanner) bool { return s.phase == phaseBody })
	if consumed != total {
		t.Fatalf("consumed %d bytes, want %d", consumed, total)
	}
	if replies != 2 {
		t.Fatalf("replies = %d, want 2", replies)
	}
}

// TestLongLineThroughSmallWindow streams 200,000-byte lines of every line
// type, full of lone CRs and LFs, through a 4 KiB window; one sits in a push.
func TestLongLineThroughSmallWindow(t *testing.T) {
	const lineLen = 200_000
	for _, typ := range "+-:,(_#" {
		t.Run(string(typ), func(t *testing.T) {
			line := func() io.Reader {
				return io.MultiReader(strings.NewReader(string(typ)), io.LimitReader(&repeatReader{text: linePattern}, lineLen), strings.NewReader("\r\n"))
			}
			src := &oddReader{
				r: io.MultiReader(
					line(),
					strings.NewReader(">2\r\n+message\r\n"), line(),
					strings.NewReader("*2\r\n"), line(), line(),
					strings.NewReader(":1\r\n"),
				),
				n: 4093, // a prime below the window size
			}
			total := int64(4*(lineLen+3) + len(">2\r\n+message\r\n*2\r\n:1\r\n"))
			var window [4096]byte
			consumed, replies, pushes := scanWindow(t, src, window[:], func(s *Scanner) bool { return s.phase == phaseLine })
			if consumed != total || replies != 3 || pushes != 1 {
				t.Fatalf("consumed %d of %d, replies %d (want 3), pushes %d (want 1)",
					consumed, total, replies, pushes)
			}
		})
	}
}

func TestScanAllocs(t *testing.T) {
	stream, replies, pushes := multiStream()
	var s Scanner
	allocs := testing.AllocsPerRun(100, func() {
		s.Reset()
		n, k, p, err := drain(&s, stream, 0)
		if n != len(stream) || k != replies || p != pushes || err != nil {
			t.Fatalf("drain = (%d, %d, %d, %v)", n, k, p, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Scan allocates %v times per run, want 0", allocs)
	}
	// Byte-by-byte (incomplete lines, partial bodies) must not allocate either.
	allocs = testing.AllocsPerRun(10, func() {
		s.Reset()
		start := 0
		for end := 1; end <= len(stream); end++ {
			n, _, _, err := drain(&s, stream[start:end], 0)
			if err != nil {
				t.Fatal(err)
			}
			start += n
		}
	})
	if allocs != 0 {
		t.Fatalf("incremental Scan allocates %v times per run, want 0", allocs)
	}
}

func benchmarkScan(b *testing.B, unit string, count int) {
	stream := []byte(strings.Repeat(unit, count))
	var s Scanner
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		n, k, err := s.Scan(stream, 0)
		if n != len(stream) || k != count || err != nil {
			b.Fatalf("Scan = (%d, %d, %v)", n, k, err)
		}
	}
}

func BenchmarkScanSimple(b *testing.B) {
	benchmarkScan(b, "+OK\r\n", 1000)
}

func BenchmarkScanBulk(b *testing.B) {
	benchmarkScan(b, "$1024\r\n"+strings.Repeat("v", 1024)+"\r\n", 64)
}

func BenchmarkScanArray(b *testing.B) {
	benchmarkScan(b, "*4\r\n$3\r\nfoo\r\n:42\r\n%1\r\n+k\r\n*2\r\n$5\r\nhello\r\n_\r\n$-1\r\n", 1000)
}

// BenchmarkScanLongLine scans 70,000-byte status lines, as scripts send.
func BenchmarkScanLongLine(b *testing.B) {
	benchmarkScan(b, "+"+strings.Repeat("x", 70_000)+"\r\n", 16)
}

// BenchmarkScanLongLineCRs is the worst case for a line: a lone CR every
// other byte.
func BenchmarkScanLongLineCRs(b *testing.B) {
	benchmarkScan(b, "-ERR "+strings.Repeat("x\r", 35_000)+"\r\n", 16)
}

// BenchmarkScanPushes scans replies with a push between each two, as a
// subscriber connection in RESP3 sees them.
func BenchmarkScanPushes(b *testing.B) {
	const count = 1000
	stream := []byte(strings.Repeat(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n:1\r\n", count))
	var s Scanner
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		n, k, p, err := drain(&s, stream, 0)
		if n != len(stream) || k != count || p != count || err != nil {
			b.Fatalf("drain = (%d, %d, %d, %v)", n, k, p, err)
		}
	}
}

// TestTrackErrors: the error replies of a stream are found at their
// positions however the stream is split, never an error inside an
// aggregate, never twice for a header split across calls.
func TestTrackErrors(t *testing.T) {
	stream := "+OK\r\n-ERR a\r\n$1\r\nx\r\n!3\r\nbad\r\n*2\r\n-ERR in\r\n:1\r\n%1\r\n+k\r\n-v\r\n-" + strings.Repeat("E", 100) + "\r\n"
	for _, step := range []int{1, 2, 3, 7, len(stream)} {
		var errs, got []int
		s := Scanner{Errors: &errs}
		done := 0
		buf := ""
		for off := 0; off < len(stream); off += step {
			buf += stream[off:min(off+step, len(stream))]
			n, k, err := s.Scan([]byte(buf), 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range errs {
				got = append(got, done+e)
			}
			errs = errs[:0]
			done += k
			buf = buf[n:]
		}
		if !slices.Equal(got, []int{1, 3, 6}) || done != 7 {
			t.Errorf("step %d: errors at %v of %d replies, want [1 3 6] of 7", step, got, done)
		}
	}
}
