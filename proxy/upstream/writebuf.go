package upstream

import "net"

// bigCommand is the size from which a command is written from the client's
// request buffer as it is instead of being copied: a 64 MiB SET then costs
// its request buffer and nothing more.
const bigCommand = 64 << 10

// writeBuf gathers commands for one write to Redis: small ones are copied
// together, large ones referenced where they are. The referenced bytes must
// stay unchanged until the write is done.
type writeBuf struct {
	small []byte
	segs  net.Buffers
}

func (w *writeBuf) add(cmd []byte) {
	if len(cmd) < bigCommand {
		w.small = append(w.small, cmd...)
		return
	}
	if len(w.small) > 0 {
		w.segs = append(w.segs, w.small)
		w.small = w.small[len(w.small):] // the segment keeps its bytes
	}
	w.segs = append(w.segs, cmd)
}

func (w *writeBuf) empty() bool { return len(w.small) == 0 && len(w.segs) == 0 }

// writeTo writes everything gathered to c and empties the buffer.
func (w *writeBuf) writeTo(c net.Conn) error {
	var err error
	if len(w.segs) == 0 {
		_, err = c.Write(w.small)
	} else {
		if len(w.small) > 0 {
			w.segs = append(w.segs, w.small)
		}
		bufs := w.segs // WriteTo consumes the slice
		_, err = bufs.WriteTo(c)
		clear(w.segs)
		w.segs = w.segs[:0]
		w.small = nil
	}
	w.small = w.small[:0]
	if cap(w.small) > 1<<20 {
		w.small = nil // do not keep a large buffer around
	}
	return err
}
