package resp

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"
)

// FuzzRequest checks that the request parser never panics, that its verdict
// does not depend on how the stream is split or on when Fill and Release are
// called, that Fill leaves the last Read's requests intact, and that every
// Raw parses back to the same arguments (a multibulk Raw being the next bytes
// of the input).
func FuzzRequest(f *testing.F) {
	for _, tc := range requestCases {
		f.Add([]byte(tc.in), uint64(1), uint16(0), uint16(0))
	}
	f.Add([]byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"), uint64(7), uint16(20), uint16(0))
	f.Add([]byte("*2\r\n$4\r\nECHO\r\n$10\r\n0123456789\r\n"), uint64(3), uint16(0), uint16(9))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, limit, maxBulk uint16) {
		lim, mb := 1<<20, int64(defaultMaxBulk)
		if limit != 0 {
			lim = int(limit)
		}
		if maxBulk != 0 {
			mb = int64(maxBulk)
		}
		whole := checkedOutcome(t, data, bytes.NewReader(data), lim, mb, nil)
		rng := rand.New(rand.NewPCG(seed, seed>>7))
		others := map[string]outcome{
			"in random chunks": checkedOutcome(t, data, &randomChunks{data, rng}, lim, mb, rng),
		}
		// Byte by byte is slow on long inputs, which the fuzzer then takes
		// minutes to minimize; random chunks cover them.
		if len(data) <= 4096 {
			others["byte by byte"] = checkedOutcome(t, data, &oddReader{bytes.NewReader(data), 1}, lim, mb, nil)
		}
		for how, o := range others {
			if o.String() != whole.String() || !slices.Equal(o.raws, whole.raws) {
				t.Fatalf("%s: %v\nwhole: %v", how, o, whole)
			}
		}
		for i, raw := range whole.raws {
			back := readOutcome(t, NewRequestReader(bytes.NewReader([]byte(raw)), 1<<30, 1<<30))
			if len(back.reqs) != 1 || back.err != "EOF" || !slices.Equal(back.reqs[0], whole.reqs[i]) {
				t.Fatalf("Raw %q parses to %v, want %q", raw, back, whole.reqs[i])
			}
		}
	})
}

// checkedOutcome reads data from src like readOutcome. With rng it also calls
// Fill and Release at random between Reads. It checks that a multibulk
// request's Raw is the next bytes of data and that Fill changes no request.
func checkedOutcome(t *testing.T, data []byte, src io.Reader, limit int, maxBulk int64, rng *rand.Rand) outcome {
	r := NewRequestReader(src, limit, maxBulk)
	var o outcome
	rest := data
	for {
		reqs, err := r.Read()
		var before outcome
		before.add(reqs)
		for _, q := range reqs {
			if !r.holds(q.Raw) {
				continue // inline: Raw is an encoding
			}
			i := bytes.Index(rest, q.Raw)
			if i < 0 || q.Raw[0] != '*' {
				t.Fatalf("multibulk Raw %q is not the next bytes of the input", q.Raw)
			}
			rest = rest[i+len(q.Raw):]
		}
		for rng != nil && rng.IntN(3) == 0 {
			if ferr := r.Fill(); ferr != nil && ferr != ErrBufferFull && ferr != io.EOF && ferr != err {
				t.Fatalf("Fill = %v", ferr)
			}
		}
		var after outcome
		after.add(reqs)
		if after.String() != before.String() || !slices.Equal(after.raws, before.raws) {
			t.Fatalf("Fill changed the requests of the last Read:\n%v\n%v", before, after)
		}
		o.add(reqs)
		if err != nil {
			o.err = errText(t, err)
			return o
		}
		if len(reqs) == 0 {
			t.Fatal("Read returned no request and no error")
		}
		if rng != nil && rng.IntN(2) == 0 {
			r.Release()
		}
	}
}

// holds reports whether p lies in the reader's buffer.
func (r *RequestReader) holds(p []byte) bool {
	if r.b == nil || len(p) == 0 || cap(r.b.data) == 0 {
		return false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(r.b.data)))
	at := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	return base <= at && at < base+uintptr(cap(r.b.data))
}

// randomChunks returns data in pieces of random sizes, sometimes empty.
type randomChunks struct {
	data []byte
	rng  *rand.Rand
}

func (c *randomChunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), c.rng.IntN(40))
	if c.rng.IntN(8) == 0 {
		n = min(len(p), len(c.data)) // a big read now and then
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}
