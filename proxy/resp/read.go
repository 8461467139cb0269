package resp

import (
	"bufio"
	"errors"
	"io"
)

// readChunk bounds how much of a bulk body ReadReply requests at once, so the
// memory it uses grows with the data actually received, not with the length a
// header announces.
const readChunk = 64 * 1024

// ReadReply reads exactly one complete reply from r and returns its raw bytes.
// It never reads past the end of the reply. At a clean end of stream it returns
// io.EOF; if the stream ends inside a reply it returns io.ErrUnexpectedEOF.
func ReadReply(r *bufio.Reader) ([]byte, error) {
	var (
		s     Scanner
		out   []byte
		start int // bytes of out already consumed by s
	)
	for {
		var rerr error
		if s.phase == phaseHeader {
			// Read up to and including the next '\n' (or as much as the
			// reader's buffer holds, if the line is longer than that).
			var chunk []byte
			chunk, rerr = r.ReadSlice('\n')
			out = append(out, chunk...)
			if errors.Is(rerr, bufio.ErrBufferFull) {
				rerr = nil
			}
		} else {
			// Read the rest of the bulk body and its CRLF, but no further.
			var need int64
			switch s.phase {
			case phaseBody:
				need = s.bulk + 2
			case phaseCR:
				need = 2
			case phaseLF:
				need = 1
			}
			need = min(need, readChunk)
			old := len(out)
			out = append(out, make([]byte, need)...)
			var got int
			got, rerr = io.ReadFull(r, out[old:])
			out = out[:old+got]
		}

		n, k, err := s.Scan(out[start:], 1)
		if err != nil {
			return nil, err
		}
		start += n
		if k == 1 {
			return out[:start], nil
		}
		if rerr != nil {
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				if len(out) == 0 {
					return nil, io.EOF
				}
				return nil, io.ErrUnexpectedEOF
			}
			return nil, rerr
		}
	}
}
