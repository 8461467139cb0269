package resp

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// scanResult summarises scanning a whole input.
type scanResult struct {
	consumed int
	replies  int
	pushes   int
	err      bool
}

func FuzzScan(f *testing.F) {
	for _, tc := range validCases {
		if len(tc.in) < 1024 {
			f.Add([]byte(tc.in))
		}
	}
	for _, tc := range invalidCases {
		if len(tc.in) < 1024 {
			f.Add([]byte(tc.in))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// All at once.
		var whole Scanner
		n, k, pushes, err := drain(&whole, data, 0)
		if n < 0 || n > len(data) || k < 0 || pushes < 0 {
			t.Fatalf("drain = (%d, %d, %d, %v) for %d bytes", n, k, pushes, err, len(data))
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v does not wrap ErrProtocol", err)
		}
		want := scanResult{n, k, pushes, err != nil}
		if err == nil && n < len(data) {
			checkHeldHeader(t, &whole, data[n:])
		}

		// Byte by byte, keeping unconsumed bytes as a caller would, and
		// noting where each frame ends.
		var (
			inc  Scanner
			got  scanResult
			buf  []byte
			ends []frameEnd
		)
		for _, c := range data {
			buf = append(buf, c)
			n, k, p, err := drain(&inc, buf, 0)
			got.consumed += n
			got.replies += k
			got.pushes += p
			buf = buf[n:]
			if k+p > 1 {
				t.Fatalf("one byte completed %d frames", k+p)
			}
			if k+p == 1 {
				ends = append(ends, frameEnd{got.consumed, p == 1})
			}
			if err != nil {
				got.err = true
				break
			}
		}
		if got != want {
			t.Fatalf("byte-by-byte %+v, all at once %+v", got, want)
		}
		if !want.err && inc != whole {
			t.Fatalf("final state differs: byte-by-byte %+v, all at once %+v", inc, whole)
		}

		// In chunks whose sizes come from the data itself.
		var (
			chunked Scanner
			res     scanResult
		)
		buf = buf[:0]
		for off := 0; off < len(data); {
			size := 1 + int(data[off])%13
			end := min(off+size, len(data))
			buf = append(buf, data[off:end]...)
			off = end
			n, k, p, err := drain(&chunked, buf, 0)
			res.consumed += n
			res.replies += k
			res.pushes += p
			buf = buf[n:]
			if err != nil {
				res.err = true
				break
			}
		}
		if res != want {
			t.Fatalf("in chunks %+v, all at once %+v", res, want)
		}

		// One reply at a time.
		var one Scanner
		res = scanResult{}
		for {
			n, k, p, err := drain(&one, data[res.consumed:], 1)
			res.consumed += n
			res.replies += k
			res.pushes += p
			if err != nil {
				res.err = true
				break
			}
			if n == 0 {
				break
			}
		}
		if res != want {
			t.Fatalf("one at a time %+v, all at once %+v", res, want)
		}

		// Against a plain recursive reading of the grammar.
		refEnds, bad := refScan(data)
		if !equalEnds(ends, refEnds) {
			t.Fatalf("frames %v, reference %v", ends, refEnds)
		}
		if want.err != bad {
			// The scanner bounds the elements a reply owes, so it rejects
			// absurd counts that the reference would wait on forever.
			if !want.err || !strings.Contains(err.Error(), "aggregate too large") {
				t.Fatalf("error %v, reference bad=%v", err, bad)
			}
		}
	})
}

// checkHeldHeader checks what a scan without error left unconsumed: only
// the start of a length-prefixed header line, for which more bytes are needed.
func checkHeldHeader(t *testing.T, s *Scanner, rest []byte) {
	t.Helper()
	if s.phase != phaseHeader {
		t.Fatalf("stopped with %q left in phase %d", rest, s.phase)
	}
	switch kinds[rest[0]] {
	case kindBulk, kindArray, kindMap, kindAttr:
	default:
		t.Fatalf("stopped in front of %q, not a length-prefixed header", rest)
	}
	if len(rest) > MaxLineLength {
		t.Fatalf("held %d bytes of header, more than MaxLineLength", len(rest))
	}
	if i := bytes.IndexAny(rest, "\r\n"); i >= 0 && i != len(rest)-1 || rest[len(rest)-1] == '\n' {
		t.Fatalf("held %q: a complete line", rest)
	}
}

// refStatus is how the reference reading of a frame went.
type refStatus uint8

const (
	refOK    refStatus = iota
	refShort           // the data ends inside the frame
	refBad             // the frame is malformed
)

// refScan reads data as a sequence of top-level frames, and returns where
// each complete one ends and whether the stream is malformed after the last.
func refScan(data []byte) (ends []frameEnd, bad bool) {
	for pos := 0; pos < len(data); {
		end, st := refElement(data, pos)
		if st != refOK {
			return ends, st == refBad
		}
		ends = append(ends, frameEnd{end, data[pos] == '>'})
		pos = end
	}
	return ends, false
}

// refElement reads the element that starts at data[pos], and returns the
// offset just past it.
func refElement(data []byte, pos int) (int, refStatus) {
	if pos >= len(data) {
		return 0, refShort
	}
	t := data[pos]
	switch t {
	case '+', '-', ':', ',', '(', '_', '#':
		i := bytes.Index(data[pos+1:], []byte("\r\n"))
		if i < 0 {
			return 0, refShort
		}
		return pos + 1 + i + 2, refOK
	case '$', '!', '=', '*', '~', '>', '%', '|':
	default:
		return 0, refBad
	}
	rest := data[pos+1:]
	i := bytes.IndexAny(rest, "\r\n")
	switch {
	case i < 0 && len(rest)+1 > MaxLineLength:
		return 0, refBad
	case i < 0:
		return 0, refShort
	case i+1 > MaxLineLength, rest[i] == '\n':
		return 0, refBad
	case i+1 == len(rest):
		return 0, refShort
	case rest[i+1] != '\n':
		return 0, refBad
	}
	next := pos + 1 + i + 2
	text := string(rest[:i])
	if text == "-1" {
		if t == '|' {
			return 0, refBad
		}
		return next, refOK
	}
	if text == "" || strings.Trim(text, "0123456789") != "" {
		return 0, refBad
	}
	l, err := strconv.ParseUint(text, 10, 64)
	if err != nil || l > 1<<62 {
		return 0, refBad
	}
	switch t {
	case '$', '!', '=':
		end := uint64(next) + l
		switch {
		case end >= uint64(len(data)):
			return 0, refShort
		case data[end] != '\r':
			return 0, refBad
		case end+1 == uint64(len(data)):
			return 0, refShort
		case data[end+1] != '\n':
			return 0, refBad
		}
		return int(end) + 2, refOK
	}
	// Every element takes at least one byte: a count beyond the data is
	// as good as infinite.
	count := min(l, uint64(len(data)))
	switch t {
	case '%':
		count *= 2
	case '|':
		count = 2*count + 1 // the pairs, then the value they decorate
	}
	for ; count > 0; count-- {
		var st refStatus
		if next, st = refElement(data, next); st != refOK {
			return 0, st
		}
	}
	return next, refOK
}
