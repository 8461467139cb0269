package commands

import (
	"bytes"

	"github.com/tlsproxy/tlsproxy/proxy/resp"
)

// Commands whose meaning depends on their arguments are parsed here as
// Redis 7.0.15 parses them (networking.c helloCommand and clientCommand,
// t_stream.c xreadCommand), including the texts of the errors Redis can
// report without knowing the connection's state. Keywords match as Redis's
// strcasecmp matches them: in any case, and only up to a NUL byte.

// HelloOptions is what a HELLO command asks for. (Hello is its Route.)
type HelloOptions struct {
	// Proto is the requested protocol, 2 or 3; 0 when not given.
	Proto int
	// HasAuth is set by an AUTH option: User and Pass are its arguments.
	HasAuth    bool
	User, Pass []byte
	// SetName is the SETNAME option's argument: nil when not given, empty
	// (not nil) to clear the name.
	SetName []byte
}

// ParseHello parses HELLO [protover [AUTH user pass] [SETNAME name]] the
// way Redis does. errText is the error Redis would answer ("ERR ...",
// "NOPROTO ...", without '-' and CRLF), or "" when the arguments are valid.
//
// Redis applies the options in order as it reads them, so when errText is
// set the AUTH and SETNAME options before the error have already taken
// effect in Redis (h reports them) but the protocol has not changed. When an
// option is repeated, h holds the last one read. The errors that depend on
// the server (wrong password, HELLO without authentication) are Redis's.
func ParseHello(args [][]byte) (h HelloOptions, errText string) {
	next := 1
	if len(args) >= 2 {
		v, ok := resp.ParseInt(args[1])
		if !ok {
			return h, "ERR Protocol version is not an integer or out of range"
		}
		if v < 2 || v > 3 {
			return h, "NOPROTO unsupported protocol version"
		}
		h.Proto = int(v)
		next = 2
	}
	for j := next; j < len(args); j++ {
		more := len(args) - 1 - j
		switch {
		case Keyword(args[j], "auth") && more >= 2:
			h.HasAuth, h.User, h.Pass = true, args[j+1], args[j+2]
			j += 2
		case Keyword(args[j], "setname") && more >= 1:
			if !ValidClientName(args[j+1]) {
				return h, "ERR Client names cannot contain spaces, newlines or special characters."
			}
			h.SetName = args[j+1]
			if h.SetName == nil {
				h.SetName = []byte{}
			}
			j++
		default:
			return h, "ERR Syntax error in HELLO option '" + errorArg(args[j]) + "'"
		}
	}
	return h, ""
}

// ValidClientName reports whether Redis accepts name for CLIENT SETNAME or
// HELLO SETNAME: printable ASCII without spaces, or empty.
func ValidClientName(name []byte) bool {
	for _, c := range name {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// Tracking is what a CLIENT TRACKING command asks for.
type Tracking struct {
	// On is set for ON, clear for OFF.
	On bool
	// HasRedirect is set by a REDIRECT option; Redirect is its client id.
	Redirect    int64
	HasRedirect bool
	BCast       bool
	OptIn       bool
	OptOut      bool
	NoLoop      bool
	// Prefixes counts the PREFIX options.
	Prefixes int
}

// ParseTracking parses CLIENT TRACKING (ON|OFF) [REDIRECT id] [PREFIX p]...
// [BCAST] [OPTIN] [OPTOUT] [NOLOOP] the way Redis does. errText is the first
// error Redis would answer ("ERR ..."), or "" when the arguments are valid.
//
// Redis checks that the REDIRECT client exists as soon as it reads the
// option, before any later error: when HasRedirect is set, a caller that
// refuses that id reports its refusal instead of errText. The checks that
// depend on the connection's tracking state (switching BCAST, OPTIN or
// OPTOUT while tracking is on, prefixes overlapping earlier ones) are
// Redis's.
func ParseTracking(args [][]byte) (t Tracking, errText string) {
	if len(args) < 3 {
		return t, "ERR wrong number of arguments for 'client|tracking' command"
	}
	for j := 3; j < len(args); j++ {
		more := len(args) - 1 - j
		a := args[j]
		switch {
		case Keyword(a, "redirect") && more > 0:
			j++
			if t.HasRedirect {
				return t, "ERR A client can only redirect to a single other client"
			}
			id, ok := resp.ParseInt(args[j])
			if !ok {
				return t, "ERR value is not an integer or out of range"
			}
			t.Redirect, t.HasRedirect = id, true
		case Keyword(a, "bcast"):
			t.BCast = true
		case Keyword(a, "optin"):
			t.OptIn = true
		case Keyword(a, "optout"):
			t.OptOut = true
		case Keyword(a, "noloop"):
			t.NoLoop = true
		case Keyword(a, "prefix") && more > 0:
			j++
			t.Prefixes++
		default:
			return t, "ERR syntax error"
		}
	}
	switch {
	case Keyword(args[2], "on"):
		t.On = true
		switch {
		case !t.BCast && t.Prefixes > 0:
			return t, "ERR PREFIX option requires BCAST mode to be enabled"
		case t.BCast && (t.OptIn || t.OptOut):
			return t, "ERR OPTIN and OPTOUT are not compatible with BCAST"
		case t.OptIn && t.OptOut:
			return t, "ERR You can't specify both OPTIN mode and OPTOUT mode"
		}
	case Keyword(args[2], "off"):
	default:
		return t, "ERR syntax error"
	}
	return t, ""
}

// ReplyMode is the argument of CLIENT REPLY.
type ReplyMode uint8

// The modes of CLIENT REPLY.
const (
	ReplyOn   ReplyMode = iota // replies as usual
	ReplyOff                   // no replies until ON
	ReplySkip                  // no reply to the next command
)

// ParseReply parses CLIENT REPLY ON|OFF|SKIP the way Redis does. errText is
// the error Redis would answer ("ERR ..."), or "" when the argument is valid.
func ParseReply(args [][]byte) (m ReplyMode, errText string) {
	if len(args) != 3 {
		return m, "ERR wrong number of arguments for 'client|reply' command"
	}
	switch {
	case Keyword(args[2], "on"):
		return ReplyOn, ""
	case Keyword(args[2], "off"):
		return ReplyOff, ""
	case Keyword(args[2], "skip"):
		return ReplySkip, ""
	}
	return m, "ERR syntax error"
}

// xreadRoute routes XREAD and XREADGROUP by the options before STREAMS,
// scanned as xreadCommand scans them: an option's arguments are skipped, so
// a group, consumer or count spelled "block" or "streams" is not an
// option, and the scan stops at STREAMS (keys and ids follow). Shared only
// when the scan reaches STREAMS without a BLOCK option; BLOCK, or options
// Redis would reject, are Blocking: a dedicated connection is always safe.
func xreadRoute(args [][]byte) Route {
	group := len(args[0]) == len("xreadgroup") // how Redis tells the two apart
	block := false
	for i := 1; i < len(args); i++ {
		more := len(args) - 1 - i
		var buf [len("streams")]byte
		switch string(optionWord(buf[:0], args[i])) {
		case "block":
			if more == 0 {
				return Blocking // an error in Redis
			}
			block = true
			i++
		case "count":
			if more == 0 {
				return Blocking
			}
			i++
		case "streams":
			if more == 0 {
				return Blocking
			}
			if block {
				return Blocking
			}
			return Shared
		case "group":
			if !group || more < 2 {
				return Blocking
			}
			i += 2
		case "noack":
			if !group {
				return Blocking
			}
		default:
			return Blocking // an error in Redis
		}
	}
	return Blocking // no STREAMS: an error in Redis
}

// optionWord appends arg, as keyword compares it (lower case, up to a NUL),
// to b, or returns nil when that does not fit in cap(b): a word longer than
// every option the caller looks for.
func optionWord(b, arg []byte) []byte {
	arg = cString(arg)
	if len(arg) > cap(b) {
		return nil
	}
	return fold(b, arg)
}

// Keyword reports whether arg is kw (lower case) as Redis's strcasecmp
// sees it: ASCII case-insensitively, and only up to a NUL byte, so
// "BLOCK\x00x" is BLOCK.
func Keyword(arg []byte, kw string) bool {
	arg = cString(arg)
	if len(arg) != len(kw) {
		return false
	}
	for i, c := range arg {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != kw[i] {
			return false
		}
	}
	return true
}

// cString is arg as C's string functions see it: up to its first NUL.
func cString(arg []byte) []byte {
	if i := bytes.IndexByte(arg, 0); i >= 0 {
		return arg[:i]
	}
	return arg
}

// errorArg is arg as Redis prints it in a formatted error: up to its first
// NUL, with CR and LF turned into spaces.
func errorArg(arg []byte) string {
	b := []byte(string(cString(arg)))
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}
