package resp

// Inline requests (a line of words, as typed into telnet) are split as
// Redis's sdssplitargs splits them.

// splitInline splits line into arguments the way Redis's sdssplitargs does,
// appending their bytes to dst and their positions in dst to spans. line holds
// no NUL byte (lineEnd stops at one), so a NUL below stands for its end.
func splitInline(dst []byte, spans []span, line []byte) ([]byte, []span, bool) {
	at := func(i int) byte {
		if i < len(line) {
			return line[i]
		}
		return 0
	}
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return dst, spans, true
		}
		lo := len(dst)
		inDouble, inSingle := false, false
		for done := false; !done; {
			c := at(i)
			switch {
			case inDouble:
				switch {
				case c == '\\' && at(i+1) == 'x' && isHex(at(i+2)) && isHex(at(i+3)):
					dst = append(dst, unhex(at(i+2))<<4|unhex(at(i+3)))
					i += 3
				case c == '\\' && at(i+1) != 0:
					i++
					dst = append(dst, unescape(line[i]))
				case c == '"':
					// A closing quote must end the argument.
					if n := at(i + 1); n != 0 && !isSpace(n) {
						return dst, spans, false
					}
					done = true
				case c == 0:
					return dst, spans, false
				default:
					dst = append(dst, c)
				}
			case inSingle:
				switch {
				case c == '\\' && at(i+1) == '\'':
					i++
					dst = append(dst, '\'')
				case c == '\'':
					if n := at(i + 1); n != 0 && !isSpace(n) {
						return dst, spans, false
					}
					done = true
				case c == 0:
					return dst, spans, false
				default:
					dst = append(dst, c)
				}
			default:
				switch c {
				case ' ', '\n', '\r', '\t', 0: // not '\v' or '\f', unlike isspace
					done = true
				case '"':
					inDouble = true
				case '\'':
					inSingle = true
				default:
					dst = append(dst, c)
				}
			}
			if c != 0 {
				i++
			}
		}
		spans = append(spans, span{lo, len(dst)})
	}
}

// isSpace is C's isspace in the C locale, which Redis uses for LC_CTYPE.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// unescape maps the character after a backslash inside double quotes.
func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}
