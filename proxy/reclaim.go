package proxy

import (
	"runtime/debug"
	"sync/atomic"
	"time"
)

// largeTransfer is the size of a request buffer dropped, or of replies
// streamed in one burst, from which the session asks the runtime to give the
// memory back at once.
const largeTransfer = 8 << 20

// reclaimer returns memory to the operating system after large transfers.
// Go's collector would otherwise let the garbage of a 64 MiB value stand
// until the heap doubles (so two such values cost twice their size), and
// keep the pages for minutes. At most one reclaim runs per interval, so a
// client sending large values cannot keep the collector busy.
type reclaimer struct {
	interval time.Duration
	last     atomic.Int64 // unix nanos of the last reclaim
}

var memory = reclaimer{interval: time.Second}

// afterLarge notes that n bytes of buffers just became garbage.
func (r *reclaimer) afterLarge(n int) {
	if n < largeTransfer {
		return
	}
	now := time.Now().UnixNano()
	last := r.last.Load()
	if now-last < int64(r.interval) || !r.last.CompareAndSwap(last, now) {
		return
	}
	go debug.FreeOSMemory()
}
