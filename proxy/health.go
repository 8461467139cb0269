package proxy

import (
	"bytes"
	"strings"
	"sync"
	"time"
)

// upstreamHealth says whether Redis answers PING. It is checked on demand
// (by /readyz, /status and a /metrics scrape), at most once a second, one
// PING at a time: an idle proxy sends Redis nothing of its own.
type upstreamHealth struct {
	mu       sync.Mutex
	ok       bool
	reason   string // why not ok
	at       time.Time
	inflight chan struct{} // closed when the PING in flight is answered
}

const (
	healthMaxAge  = time.Second
	healthTimeout = 2 * time.Second
)

var pingCmd = []byte("*1\r\n$4\r\nPING\r\n")

// upstreamUp reports whether Redis answered a PING within healthTimeout,
// and if not, why.
func (s *Server) upstreamUp() (bool, string) {
	h := &s.health
	h.mu.Lock()
	if !h.at.IsZero() && time.Since(h.at) < healthMaxAge {
		defer h.mu.Unlock()
		return h.ok, h.reason
	}
	if h.inflight == nil {
		h.inflight = make(chan struct{})
		go s.ping(h.inflight)
	}
	done := h.inflight
	h.mu.Unlock()
	select {
	case <-done:
	case <-time.After(healthTimeout):
		return false, "Redis did not answer PING within " + healthTimeout.String()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ok, h.reason
}

func (s *Server) ping(done chan struct{}) {
	reply, err := s.pool.Exchange(2, s.defaultDB, pingCmd)
	ok, reason := err == nil && bytes.Equal(reply, []byte("+PONG\r\n")), ""
	switch {
	case err != nil:
		reason = "Redis unreachable: " + strings.TrimPrefix(unavailable(err), "ERR upstream unavailable: ")
	case !ok:
		reason = "Redis answered PING with " + strings.TrimSpace(string(reply))
	}
	h := &s.health
	h.mu.Lock()
	h.ok, h.reason, h.at = ok, reason, time.Now()
	h.inflight = nil
	h.mu.Unlock()
	close(done)
}
