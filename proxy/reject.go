package proxy

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// rejectLog logs refused TLS handshakes, at most burst per interval, so a
// flood of bad connections cannot fill the disk; the lines it drops are
// counted and reported with the next line it writes.
type rejectLog struct {
	log      zerolog.Logger
	burst    int
	interval time.Duration

	mu         sync.Mutex
	windowFrom time.Time
	inWindow   int
	suppressed int
	counts     map[string]uint64 // by reason, for metrics
}

func newRejectLog(log zerolog.Logger) *rejectLog {
	return &rejectLog{log: log, burst: 20, interval: 10 * time.Second, counts: make(map[string]uint64)}
}

// reasonSilent is a connection that closed before sending any byte (silent
// is set when none arrived): a
// load balancer's TCP check or a port scan. It is counted, and logged at
// debug level only.
const reasonSilent = "closed_before_tls"

func (r *rejectLog) reject(remote string, err error, silent bool) {
	reason := rejectReason(err)
	silent = silent && reason == "closed" // a silent client that times out is a timeout
	if silent {
		reason = reasonSilent
	}
	now := time.Now()
	r.mu.Lock()
	r.counts[reason]++
	if silent {
		r.mu.Unlock()
		r.log.Debug().Str("remote", remote).Str("reason", reason).Msg("connection closed before the TLS handshake")
		return
	}
	if now.Sub(r.windowFrom) >= r.interval {
		r.windowFrom, r.inWindow = now, 0
	}
	if r.inWindow >= r.burst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.inWindow++
	suppressed := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()

	ev := r.log.Warn().Str("remote", remote).Str("reason", reason).Str("error", err.Error())
	if suppressed > 0 {
		ev = ev.Int("suppressed_before", suppressed)
	}
	ev.Msg("TLS handshake rejected")
}

// snapshot returns the counts by reason.
func (r *rejectLog) snapshot() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]uint64, len(r.counts))
	for k, v := range r.counts {
		m[k] = v
	}
	return m
}

// count returns how many handshakes were rejected for reason.
func (r *rejectLog) count(reason string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[reason]
}

// rejectReason names why a handshake failed, in a word that can be counted.
func rejectReason(err error) string {
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	msg := err.Error()
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &unknownCA):
		return "unknown_ca"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "expired"
	case errors.As(err, &invalid):
		return "invalid_cert"
	case strings.Contains(msg, "didn't provide a certificate"), strings.Contains(msg, "certificate required"):
		return "no_client_cert"
	case strings.Contains(msg, "does not look like a TLS handshake"):
		return "not_tls"
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version"):
		return "protocol_version"
	case strings.Contains(msg, "EOF"), strings.Contains(msg, "connection reset"):
		return "closed"
	}
	return "other"
}
