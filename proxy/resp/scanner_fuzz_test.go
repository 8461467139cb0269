package resp

import (
	"errors"
	"testing"
)

// scanResult summarises scanning a whole input.
type scanResult struct {
	consumed int
	replies  int
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
		n, k, err := whole.Scan(data, 0)
		if n < 0 || n > len(data) || k < 0 {
			t.Fatalf("Scan = (%d, %d, %v) for %d bytes", n, k, err, len(data))
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Fatalf("error %v does not wrap ErrProtocol", err)
		}
		if err == nil && n < len(data) && whole.phase != phaseHeader {
			t.Fatalf("stopped early at %d of %d outside a header line", n, len(data))
		}
		want := scanResult{n, k, err != nil}

		// Byte by byte, keeping unconsumed bytes as a caller would.
		var (
			inc Scanner
			got scanResult
			buf []byte
		)
		for _, c := range data {
			buf = append(buf, c)
			n, k, err := inc.Scan(buf, 0)
			got.consumed += n
			got.replies += k
			buf = buf[n:]
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

		// One reply at a time.
		var (
			one Scanner
			res scanResult
		)
		for {
			n, k, err := one.Scan(data[res.consumed:], 1)
			if k > 1 {
				t.Fatalf("max=1 completed %d replies", k)
			}
			res.consumed += n
			res.replies += k
			if err != nil {
				res.err = true
				break
			}
			if k == 0 {
				break
			}
		}
		if res != want {
			t.Fatalf("one at a time %+v, all at once %+v", res, want)
		}
	})
}
