package resp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

type scanCase struct {
	name    string
	in      string
	replies int
	// left is the number of trailing bytes a valid case leaves unconsumed.
	left int
	// consumed is the number of bytes an invalid case consumes before the error.
	consumed int
	inReply  bool // expected InReply after scanning (valid cases only)
}

// validCases are complete, well-formed streams.
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
	{name: "push", in: ">4\r\n+pubsub\r\n+message\r\n+somechannel\r\n+this is the message\r\n", replies: 1},
	{
		name:    "attribute before reply",
		in:      "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
		replies: 1,
	},
	{name: "attribute empty", in: "|0\r\n+OK\r\n", replies: 1},
	{name: "attribute before bulk", in: "|1\r\n+ttl\r\n:3600\r\n$3\r\nval\r\n", replies: 1},
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
	{name: "multiple replies", in: "+OK\r\n:1\r\n$-1\r\n*1\r\n+x\r\n>1\r\n+p\r\n", replies: 5},
	{name: "long line", in: "+" + strings.Repeat("x", MaxLineLength-1) + "\r\n", replies: 1},
	// Incomplete streams: the scanner stops before an unfinished header line
	// and consumes partial bulk bodies.
	{name: "partial line", in: "+OK", replies: 0, left: 3},
	{name: "partial line CR", in: "+OK\r", replies: 0, left: 4},
	{name: "reply then partial line", in: "+OK\r\n:12", replies: 1, left: 3},
	{name: "partial array", in: "*2\r\n:1\r\n", replies: 0, inReply: true},
	{name: "partial bulk body", in: "$5\r\nhel", replies: 0, inReply: true},
	{name: "partial bulk CRLF", in: "$5\r\nhello\r", replies: 0, inReply: true},
	{name: "attribute only", in: "|1\r\n+a\r\n+b\r\n", replies: 0, inReply: true},
	{name: "partial header in array", in: "*2\r\n:1\r\n:", replies: 0, left: 1, inReply: true},
}

var invalidCases = []scanCase{
	{name: "unknown type byte", in: "?x\r\n"},
	{name: "unknown type after reply", in: "+OK\r\n@x\r\n", replies: 1, consumed: 5},
	{name: "unknown type without newline", in: "x"},
	{name: "empty line", in: "\r\n"},
	{name: "LF only", in: "+OK\n"},
	{name: "LF only in length", in: "*1\n"},
	{name: "CR without LF", in: "+OK\rX"},
	{name: "bare CR in bulk length", in: "$1\r2\r\n"},
	{name: "CR inside simple", in: "+a\rb\r\n"},
	{name: "bad bulk length", in: "$abc\r\n"},
	{name: "empty bulk length", in: "$\r\n"},
	{name: "bulk length -2", in: "$-2\r\n"},
	{name: "bulk length -0", in: "$-0\r\n"},
	{name: "bulk length plus", in: "$+1\r\n"},
	{name: "bulk length overflow", in: "$99999999999999999999999\r\n"},
	{name: "array length -2", in: "*-2\r\n"},
	{name: "array length bad", in: "*1x\r\n"},
	{name: "map length overflow", in: "%4611686018427387904\r\n"},
	{name: "null attribute", in: "|-1\r\n"},
	{name: "missing CRLF after bulk", in: "$3\r\nfooXY", consumed: 7},
	{name: "missing LF after bulk", in: "$3\r\nfoo\rX", consumed: 8},
	{name: "bulk too long for length", in: "$2\r\nfoo\r\n", consumed: 6},
	{name: "streamed string", in: "$?\r\n"},
	{name: "streamed array", in: "*?\r\n"},
	{name: "bad null", in: "_x\r\n"},
	{name: "bad boolean", in: "#x\r\n"},
	{name: "bad integer", in: ":12a\r\n"},
	{name: "empty integer", in: ":\r\n"},
	{name: "sign only integer", in: ":-\r\n"},
	{name: "bad big number", in: "(1.5\r\n"},
	{name: "line too long", in: "+" + strings.Repeat("x", MaxLineLength) + "\r\n"},
	{name: "line too long incomplete", in: "+" + strings.Repeat("x", MaxLineLength+1)},
	{name: "error inside array", in: "*2\r\n:1\r\n?\r\n", consumed: 8},
}

func TestScanTable(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			var s Scanner
			n, k, err := s.Scan([]byte(tc.in), 0)
			if err != nil {
				t.Fatalf("Scan(%q) error: %v", tc.in, err)
			}
			want := len(tc.in) - tc.left
			if n != want || k != tc.replies {
				t.Errorf("Scan(%q) = (%d, %d), want (%d, %d)", tc.in, n, k, want, tc.replies)
			}
			if s.InReply() != tc.inReply {
				t.Errorf("InReply() = %v, want %v", s.InReply(), tc.inReply)
			}
		})
	}
}

func TestScanInvalid(t *testing.T) {
	for _, tc := range invalidCases {
		t.Run(tc.name, func(t *testing.T) {
			var s Scanner
			n, k, err := s.Scan([]byte(tc.in), 0)
			if err == nil {
				t.Fatalf("Scan(%q) = (%d, %d, nil), want error", tc.in, n, k)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("error %v does not wrap ErrProtocol", err)
			}
			if n != tc.consumed || k != tc.replies {
				t.Errorf("Scan(%q) = (%d, %d), want (%d, %d)", tc.in, n, k, tc.consumed, tc.replies)
			}
			// The error is sticky.
			if n2, k2, err2 := s.Scan([]byte("+OK\r\n"), 0); err2 == nil || n2 != 0 || k2 != 0 {
				t.Errorf("Scan after error = (%d, %d, %v), want sticky error", n2, k2, err2)
			}
			// Byte-by-byte feeding reports the error too.
			var s2 Scanner
			if _, _, _, err := feed(&s2, chunksOf([]byte(tc.in), 1)); err == nil {
				t.Errorf("byte-by-byte Scan(%q): no error", tc.in)
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
}

// feed scans chunks as a proxy would: bytes not consumed by a call are kept
// and the next chunk is appended to them. It returns the concatenation of the
// consumed segments, the total reply count, and what is left unconsumed.
func feed(s *Scanner, chunks [][]byte) (out []byte, replies int, left []byte, err error) {
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		n, k, err := s.Scan(buf, 0)
		out = append(out, buf[:n]...)
		replies += k
		buf = buf[n:]
		if err != nil {
			return out, replies, buf, err
		}
	}
	return out, replies, buf, nil
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

// completeCases returns the valid cases that are whole replies.
func completeCases() []scanCase {
	var cs []scanCase
	for _, tc := range validCases {
		if tc.replies > 0 && !tc.inReply && tc.left == 0 {
			cs = append(cs, tc)
		}
	}
	return cs
}

func multiStream() (stream []byte, replies int) {
	for _, tc := range completeCases() {
		if len(tc.in) > 1000 {
			continue
		}
		stream = append(stream, tc.in...)
		replies += tc.replies
	}
	return stream, replies
}

func TestSplitByteByByte(t *testing.T) {
	for _, tc := range completeCases() {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			var s Scanner
			out, k, left, err := feed(&s, chunksOf(in, 1))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, in) || len(left) != 0 {
				t.Errorf("consumed %q, left %q; want %q", out, left, in)
			}
			if k != tc.replies {
				t.Errorf("replies = %d, want %d", k, tc.replies)
			}
			if s.InReply() {
				t.Error("InReply() = true after complete replies")
			}
		})
	}
}

func TestSplitEverywhere(t *testing.T) {
	stream, want := multiStream()
	for i := 0; i <= len(stream); i++ {
		var s Scanner
		out, k, left, err := feed(&s, [][]byte{stream[:i], stream[i:]})
		if err != nil {
			t.Fatalf("split at %d: %v", i, err)
		}
		if !bytes.Equal(out, stream) || len(left) != 0 {
			t.Fatalf("split at %d: consumed segments do not reassemble the input", i)
		}
		if k != want {
			t.Fatalf("split at %d: replies = %d, want %d", i, k, want)
		}
	}
	// Several chunk sizes, including ones that straddle many boundaries.
	for size := 1; size <= 64; size++ {
		var s Scanner
		out, k, left, err := feed(&s, chunksOf(stream, size))
		if err != nil || !bytes.Equal(out, stream) || len(left) != 0 || k != want {
			t.Fatalf("chunk size %d: err=%v replies=%d/%d equal=%v left=%d",
				size, err, k, want, bytes.Equal(out, stream), len(left))
		}
	}
}

// boundaries returns the offsets at which each reply of stream ends, found by
// scanning one byte at a time.
func boundaries(t *testing.T, stream []byte) []int {
	t.Helper()
	var (
		s    Scanner
		ends []int
		off  int
		buf  []byte
	)
	for _, c := range stream {
		buf = append(buf, c)
		n, k, err := s.Scan(buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		if k > 1 {
			t.Fatalf("one byte completed %d replies", k)
		}
		off += n
		buf = buf[n:]
		if k == 1 {
			ends = append(ends, off)
		}
	}
	return ends
}

func TestMaxLimit(t *testing.T) {
	replies := []string{
		"+OK\r\n",
		"|1\r\n+a\r\n+b\r\n:1\r\n", // attribute belongs to this reply
		"$3\r\nfoo\r\n",
		">2\r\n+message\r\n+x\r\n",
		"*2\r\n%1\r\n+k\r\n+v\r\n_\r\n",
		":7\r\n",
	}
	stream := []byte(strings.Join(replies, ""))
	var wantEnds []int
	off := 0
	for _, r := range replies {
		off += len(r)
		wantEnds = append(wantEnds, off)
	}
	if got := boundaries(t, stream); !equalInts(got, wantEnds) {
		t.Fatalf("byte-by-byte boundaries = %v, want %v", got, wantEnds)
	}

	for max := 1; max <= len(replies)+1; max++ {
		var s Scanner
		off := 0
		done := 0
		for off < len(stream) {
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
			if off != wantEnds[done-1] {
				t.Fatalf("max=%d: stopped at %d, want reply boundary %d", max, off, wantEnds[done-1])
			}
			if s.InReply() {
				t.Fatalf("max=%d: InReply() = true at a reply boundary", max)
			}
		}
		if done != len(replies) {
			t.Fatalf("max=%d: replies = %d, want %d", max, done, len(replies))
		}
	}

	// max <= 0 means no limit.
	for _, max := range []int{0, -1} {
		var s Scanner
		if n, k, err := s.Scan(stream, max); n != len(stream) || k != len(replies) || err != nil {
			t.Fatalf("max=%d: Scan = (%d, %d, %v)", max, n, k, err)
		}
	}
}

func equalInts(a, b []int) bool {
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

// patternReader yields an endless repeating byte pattern that includes CR
// and LF bytes.
type patternReader struct{ off int }

const pattern = "0123456789\r\nabcdefghijklmnopqrstuvwxyz\r\n$*+-:\n\r"

func (p *patternReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = pattern[p.off]
		p.off++
		if p.off == len(pattern) {
			p.off = 0
		}
	}
	return len(b), nil
}

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

func TestLargeBulkThroughSmallWindow(t *testing.T) {
	const bodyLen = 64 << 20
	header := "$67108864\r\n"
	trailer := "\r\n+OK\r\n"
	total := int64(len(header) + bodyLen + len(trailer))
	src := &oddReader{
		r: io.MultiReader(
			strings.NewReader(header),
			io.LimitReader(&patternReader{}, bodyLen),
			strings.NewReader(trailer),
		),
		n: 65521, // a prime, so reads straddle header, body and CRLF boundaries
	}

	var (
		window   [64 * 1024]byte
		fill     int
		consumed int64
		replies  int
		s        Scanner
	)
	for {
		n, rerr := src.Read(window[fill:])
		fill += n
		c, k, err := s.Scan(window[:fill], 0)
		if err != nil {
			t.Fatal(err)
		}
		if s.phase == phaseBody && c != fill {
			t.Fatalf("bulk body bytes not consumed as they arrived: %d of %d", c, fill)
		}
		consumed += int64(c)
		replies += k
		fill = copy(window[:], window[c:fill])
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
	}
	if consumed != total || fill != 0 {
		t.Fatalf("consumed %d bytes (left %d), want %d", consumed, fill, total)
	}
	if replies != 2 {
		t.Fatalf("replies = %d, want 2", replies)
	}
	if s.InReply() {
		t.Fatal("InReply() = true at end")
	}
}

func TestScanAllocs(t *testing.T) {
	stream, want := multiStream()
	var s Scanner
	allocs := testing.AllocsPerRun(100, func() {
		s.Reset()
		n, k, err := s.Scan(stream, 0)
		if n != len(stream) || k != want || err != nil {
			t.Fatalf("Scan = (%d, %d, %v)", n, k, err)
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
			n, _, err := s.Scan(stream[start:end], 0)
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

func TestReadReply(t *testing.T) {
	bigBulk := "$100000\r\n" + strings.Repeat("b", 100000) + "\r\n"
	longLine := "+" + strings.Repeat("l", 20000) + "\r\n" // longer than bufio's buffer
	replies := []string{
		"+OK\r\n",
		"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n",
		"|1\r\n+a\r\n+b\r\n$2\r\nhi\r\n",
		bigBulk,
		longLine,
		"*2\r\n$0\r\n\r\n*1\r\n$-1\r\n",
		"-NOAUTH Authentication required.\r\n",
	}
	stream := strings.Join(replies, "")
	for _, size := range []int{1, 7, 4096} {
		r := bufio.NewReaderSize(&oddReader{r: strings.NewReader(stream), n: size}, 16)
		for i, want := range replies {
			got, err := ReadReply(r)
			if err != nil {
				t.Fatalf("read size %d, reply %d: %v", size, i, err)
			}
			if string(got) != want {
				t.Fatalf("read size %d, reply %d: got %d bytes %.40q, want %d bytes %.40q",
					size, i, len(got), got, len(want), want)
			}
		}
		if _, err := ReadReply(r); err != io.EOF {
			t.Fatalf("read size %d: at end err = %v, want io.EOF", size, err)
		}
	}
}

func TestReadReplyErrors(t *testing.T) {
	for _, in := range []string{"+OK", "$5\r\nhel", "$5\r\nhello\r", "*2\r\n:1\r\n"} {
		if _, err := ReadReply(bufio.NewReader(strings.NewReader(in))); err != io.ErrUnexpectedEOF {
			t.Errorf("ReadReply(%q) err = %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
	for _, in := range []string{"?\r\n", "$3\r\nfooXX", "+" + strings.Repeat("x", MaxLineLength+10)} {
		if _, err := ReadReply(bufio.NewReader(strings.NewReader(in))); !errors.Is(err, ErrProtocol) {
			t.Errorf("ReadReply(%.20q) err = %v, want ErrProtocol", in, err)
		}
	}
	// ReadReply does not read past the reply it returns.
	r := bufio.NewReader(strings.NewReader("$3\r\nfoo\r\nrest"))
	if got, err := ReadReply(r); err != nil || string(got) != "$3\r\nfoo\r\n" {
		t.Fatalf("ReadReply = %q, %v", got, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "rest" {
		t.Fatalf("left %q, want %q", rest, "rest")
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
