// Package resp finds the boundaries of Redis replies (RESP2 and RESP3) in a
// byte stream without decoding them, so that raw reply bytes can be forwarded
// as they arrive.
//
// The Scanner keeps its position across calls, so a reply may be split at any
// byte, including inside a header line or a bulk body. Only the header lines
// of length-prefixed types ($ * % ~ > | = !) must be presented whole; bulk
// bodies and line types (+ - : , ( _ #) are consumed as they arrive, so
// replies of any size stream through a small buffer.
//
// The scanner is only as strict as finding the end of a reply requires: a line
// type may hold anything up to its CRLF (Redis sends 70,000-byte status lines
// from scripts), because a shared connection must never be dropped over a
// reply whose end can still be found.
//
// RESP3 push frames ('>') are never replies: Scan stops in front of one, and
// the caller consumes it with ScanPush (dropping it on a shared connection,
// forwarding it on a dedicated one) without counting it.
package resp

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrProtocol is returned (wrapped with detail) when the stream is not valid RESP.
var ErrProtocol = errors.New("resp: protocol error")

// MaxLineLength is the longest header line of a length-prefixed type accepted,
// counting the type byte and excluding the terminating CRLF. A longer header
// is a protocol error; line types have no limit.
const MaxLineLength = 64 * 1024

// maxCount bounds lengths and the pending-element counter so that the
// arithmetic on them can never overflow.
const maxCount = 1 << 62

// phase is where the scanner is inside the stream.
type phase uint8

const (
	phaseHeader phase = iota // expecting a header line
	phaseBody                // skipping bulk body bytes
	phaseCR                  // expecting the '\r' that ends a bulk body
	phaseLF                  // expecting the '\n' that ends a bulk body
	phaseLine                // inside the payload of a line type, looking for CRLF
)

// kind classifies a type byte.
type kind uint8

const (
	kindInvalid kind = iota
	kindLine         // + - , : ( _ # a line: anything up to CRLF
	kindBulk         // $ ! = length-prefixed body
	kindArray        // * ~ > n elements
	kindMap          // % 2n elements
	kindAttr         // | 2n elements, followed by the value it decorates
)

var kinds = [256]kind{
	'+': kindLine,
	'-': kindLine,
	',': kindLine,
	':': kindLine,
	'(': kindLine,
	'_': kindLine,
	'#': kindLine,
	'$': kindBulk,
	'!': kindBulk,
	'=': kindBulk,
	'*': kindArray,
	'~': kindArray,
	'>': kindArray,
	'%': kindMap,
	'|': kindAttr,
}

// Scanner finds the ends of RESP replies in a byte stream. The zero value is ready to use.
type Scanner struct {
	// pending is the number of elements still owed by the current reply,
	// not counting the bulk body in progress (if any). It is zero between
	// replies and while the last element of a reply is a bulk body.
	pending int64
	// bulk is the number of bulk body bytes still to skip in phaseBody.
	bulk int64
	// phase is the position inside the current element.
	phase phase
	// push is set while a top-level push frame is being consumed.
	push bool
	// lineCR is set in phaseLine when the last byte consumed was a CR.
	lineCR bool
	// err is sticky: once set, every Scan returns it.
	err error

	// Errors, when set, is where Scan notes the error replies ('-' or '!'):
	// for each, its position among the replies completed by the Scan call
	// that read its first byte. The caller empties it.
	Errors *[]int
}

// Scan consumes reply bytes from p and reports how many bytes it consumed and how many
// top-level replies it completed, never completing more than max replies (max <= 0 means no limit).
// It stops early (consumed < len(p)) when the next header line is incomplete in p (the caller
// keeps those bytes and calls again with more appended), when max replies are complete, or in
// front of a top-level push frame (AtPush then holds: consume it with ScanPush).
// Bytes of a bulk body are consumed as they arrive, even if the body is not complete.
// A malformed stream returns an error (ErrProtocol wrapped with detail); the scanner is then unusable.
func (s *Scanner) Scan(p []byte, max int) (consumed int, replies int, err error) {
	if s.push && s.err == nil {
		return 0, 0, nil // the caller must finish the push with ScanPush
	}
	return s.scan(p, max)
}

// AtPush reports whether the next bytes of the stream, p, belong to a push
// frame: one has begun (a partial push was consumed) or p starts one.
func (s *Scanner) AtPush(p []byte) bool {
	return s.push || (len(p) > 0 && p[0] == '>' && !s.InReply())
}

// ScanPush consumes the push frame that AtPush reported, as Scan consumes a
// reply: it returns the bytes consumed and whether the push is complete.
func (s *Scanner) ScanPush(p []byte) (consumed int, done bool, err error) {
	if !s.AtPush(p) {
		return 0, false, nil
	}
	s.push = true
	n, k, err := s.scan(p, 1)
	if k == 1 {
		s.push = false
	}
	return n, k == 1, err
}

func (s *Scanner) scan(p []byte, max int) (consumed int, replies int, err error) {
	if s.err != nil {
		return 0, 0, s.err
	}
	i := 0
	for i < len(p) {
		switch s.phase {
		case phaseHeader:
			if p[i] == '>' && s.pending == 0 && !s.push {
				return i, replies, nil // a push, not a reply
			}
			top, t := s.pending == 0, p[i]
			n, err := s.header(p[i:])
			if err != nil {
				s.err = err
				return i, replies, err
			}
			if n == 0 {
				return i, replies, nil // incomplete line: caller must supply more
			}
			if s.Errors != nil && top && (t == '-' || t == '!') {
				*s.Errors = append(*s.Errors, replies)
			}
			i += n
		case phaseBody:
			n := len(p) - i
			if int64(n) >= s.bulk {
				n = int(s.bulk)
				s.phase = phaseCR
			}
			s.bulk -= int64(n)
			i += n
			continue
		case phaseCR:
			if p[i] != '\r' {
				s.err = fmt.Errorf("%w: bulk body not followed by CRLF (got %q)", ErrProtocol, p[i])
				return i, replies, s.err
			}
			i++
			s.phase = phaseLF
			continue
		case phaseLF:
			if p[i] != '\n' {
				s.err = fmt.Errorf("%w: bulk body not followed by CRLF (got \\r%q)", ErrProtocol, p[i])
				return i, replies, s.err
			}
			i++
			s.phase = phaseHeader
		case phaseLine:
			n, end := s.line(p[i:])
			i += n
			if !end {
				return i, replies, nil
			}
			s.phase = phaseHeader
		}
		// An element just finished, or an aggregate header was read.
		if s.phase == phaseHeader && s.pending == 0 {
			replies++
			if max > 0 && replies >= max {
				return i, replies, nil
			}
		}
	}
	return i, replies, nil
}

// header parses one header line at the start of b (s.phase == phaseHeader,
// len(b) > 0). It returns the line length including CRLF, or 0 if the line is
// not complete in b.
func (s *Scanner) header(b []byte) (int, error) {
	t := b[0]
	k := kinds[t]
	if k == kindInvalid {
		return 0, fmt.Errorf("%w: unknown type byte %q", ErrProtocol, t)
	}
	if k == kindLine {
		// Every element fills one slot of its parent (none at top level).
		if s.pending > 0 {
			s.pending--
		}
		n, end := s.line(b[1:])
		if !end {
			s.phase = phaseLine
		}
		return 1 + n, nil
	}
	// A line is the type byte and a payload free of CR and LF, then CRLF.
	j := lineEnd(b)
	if j < 0 {
		if len(b) > MaxLineLength {
			return 0, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, MaxLineLength)
		}
		return 0, nil
	}
	if j > MaxLineLength {
		return 0, fmt.Errorf("%w: line longer than %d bytes", ErrProtocol, MaxLineLength)
	}
	if b[j] != '\r' {
		return 0, fmt.Errorf("%w: LF without CR in %q line", ErrProtocol, t)
	}
	if j+1 == len(b) {
		return 0, nil // the LF has not arrived yet
	}
	if b[j+1] != '\n' {
		return 0, fmt.Errorf("%w: CR without LF in %q line", ErrProtocol, t)
	}
	line := b[1:j]
	n := j + 2

	// Every element fills one slot of its parent (none at top level).
	if s.pending > 0 {
		s.pending--
	}

	{ // length-prefixed
		if len(line) == 1 && line[0] == '?' {
			return 0, fmt.Errorf("%w: streamed types not supported", ErrProtocol)
		}
		l, ok := parseLength(line)
		if !ok {
			return 0, fmt.Errorf("%w: invalid length in %q header", ErrProtocol, t)
		}
		if l < 0 { // null
			if k == kindAttr {
				return 0, fmt.Errorf("%w: null attribute", ErrProtocol)
			}
			return n, nil
		}
		switch k {
		case kindBulk:
			// Fast path: the whole body and its CRLF are already here.
			if end := int64(n) + l; end+2 <= int64(len(b)) && b[end] == '\r' && b[end+1] == '\n' {
				return int(end) + 2, nil
			}
			s.bulk = l
			if l == 0 {
				s.phase = phaseCR
			} else {
				s.phase = phaseBody
			}
		case kindArray:
			if l > maxCount-s.pending {
				return 0, fmt.Errorf("%w: aggregate too large", ErrProtocol)
			}
			s.pending += l
		case kindMap, kindAttr:
			if l > (maxCount-s.pending-1)/2 {
				return 0, fmt.Errorf("%w: aggregate too large", ErrProtocol)
			}
			s.pending += 2 * l
			if k == kindAttr {
				// The attribute does not count as the element: the value
				// it decorates still fills the slot.
				s.pending++
			}
		}
	}
	return n, nil
}

// line consumes the payload of a line type up to and including its CRLF. It
// returns the bytes consumed and whether the CRLF was reached; a CR at the end
// of b is consumed and remembered, since the LF may come in the next read.
func (s *Scanner) line(b []byte) (int, bool) {
	i := 0
	if s.lineCR {
		s.lineCR = false
		if len(b) > 0 && b[0] == '\n' {
			return 1, true
		}
	}
	// Most lines are short (+OK, :1): look at their bytes directly before
	// leaving long lines to the vectorised bytes.IndexByte.
	for ; i < len(b) && i < 32; i++ {
		if b[i] == '\r' {
			if i+1 == len(b) {
				s.lineCR = true
				return i + 1, false
			}
			if b[i+1] == '\n' {
				return i + 2, true
			}
		}
	}
	for {
		j := bytes.IndexByte(b[i:], '\r')
		if j < 0 {
			return len(b), false
		}
		i += j + 1
		if i == len(b) {
			s.lineCR = true
			return i, false
		}
		if b[i] == '\n' {
			return i + 1, true
		}
	}
}

// lineEnd returns the index of the first CR or LF in b[1:], looking no further
// than index MaxLineLength+1, or -1 if there is none.
func lineEnd(b []byte) int {
	b = b[:min(len(b), MaxLineLength+2)]
	// Most lines are short: look at the first bytes directly, and leave
	// long lines to the vectorised bytes.IndexByte.
	const short = 32
	i := 1
	for ; i < len(b) && i < short; i++ {
		if c := b[i]; c == '\r' || c == '\n' {
			return i
		}
	}
	if i == len(b) {
		return -1
	}
	rest := b[i:]
	cr := bytes.IndexByte(rest, '\r')
	if cr >= 0 {
		rest = rest[:cr]
	}
	if lf := bytes.IndexByte(rest, '\n'); lf >= 0 {
		return i + lf
	}
	if cr >= 0 {
		return i + cr
	}
	return -1
}

// InReply reports whether the scanner is in the middle of a reply (some of it consumed).
func (s *Scanner) InReply() bool {
	return s.phase != phaseHeader || s.pending > 0
}

// Reset returns the scanner to the start-of-reply state.
func (s *Scanner) Reset() {
	*s = Scanner{}
}

// parseLength parses a RESP length: "-1" or a non-empty run of decimal
// digits whose value does not exceed maxCount.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	if b[0] == '-' {
		return -1, len(b) == 2 && b[1] == '1'
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' || n > maxCount/10 {
			return 0, false // n*10 could overflow
		}
		n = n*10 + int64(c-'0')
		if n > maxCount {
			return 0, false
		}
	}
	return n, true
}
