package proxy

import (
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/upstream"
)

// The proxy's metrics are atomics bumped where things happen (one add per
// command, per batch, per connection: nothing on the hot path waits) and
// turned into Prometheus metrics only when /metrics is scraped.

// disconnect is why the proxy closed a client.
type disconnect uint8

const (
	byMaxClients disconnect = iota
	byIdleTimeout
	byOutputBuffer
	byWriteTimeout
	byKill
	byDrain
	disconnectReasons
)

var disconnectNames = [disconnectReasons]string{"max_clients", "idle_timeout", "output_buffer", "write_timeout", "killed", "drain"}

// pinReason is why a session holds a dedicated connection; a higher value
// wins while the session holds it.
type pinReason uint32

const (
	pinNone pinReason = iota
	pinBlocking
	pinTransaction
	pinSticky
	pinPubSub
	pinReplication
	pinReasons
)

var pinNames = [pinReasons]string{"", "blocking", "transaction", "sticky", "pubsub", "replication"}

func pinReasonOf(route commands.Route) pinReason {
	switch route {
	case commands.Replicate, commands.ReplConf:
		return pinReplication
	case commands.Subscribe:
		return pinPubSub
	case commands.Multi, commands.Watch:
		return pinTransaction
	case commands.Blocking:
		return pinBlocking
	}
	return pinSticky
}

// stats are the server's counters.
type stats struct {
	commands    [commands.IDs]atomic.Uint64
	errors      [commands.IDs]atomic.Uint64
	sessions    atomic.Uint64 // clients that completed the handshake
	active      atomic.Int64  // sessions now
	dials       [2]atomic.Uint64
	disconnects [disconnectReasons]atomic.Uint64
	replication atomic.Uint64
	reloads     [2]atomic.Uint64 // success, failure
	// Bytes of client connections that have closed; open ones are added
	// at scrape time.
	bytesIn, bytesOut atomic.Uint64

	handshake prometheus.Histogram
	batch     prometheus.Histogram
}

func newStats() *stats {
	return &stats{
		handshake: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tlsproxy_handshake_duration_seconds",
			Help:    "Time from accepting a client connection to its completed TLS handshake.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tlsproxy_batch_duration_seconds",
			Help:    "Time from queueing a batch of a client's commands on a shared upstream connection to its last reply.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}),
	}
}

// hooks count what the upstream pools see.
func (st *stats) hooks() *upstream.Hooks {
	return &upstream.Hooks{
		ReplyError: func(tag uint16) { st.errors[tag].Add(1) },
		Dial: func(err error) {
			if err != nil {
				st.dials[1].Add(1)
			} else {
				st.dials[0].Add(1)
			}
		},
		Batch: func(d time.Duration) { st.batch.Observe(d.Seconds()) },
	}
}

// clientConn is a client's connection, counting its bytes (TLS included)
// for tlsproxy_bytes_total.
type clientConn struct {
	net.Conn
	in, out atomic.Uint64
}

func (c *clientConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(uint64(n))
	return n, err
}

func (c *clientConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(uint64(n))
	return n, err
}

// registry builds the Prometheus registry /metrics serves.
func (s *Server) registry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.stats.handshake,
		s.stats.batch,
		collector{s},
	)
	return r
}

type collector struct{ s *Server }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descBuild        = desc("tlsproxy_build_info", "The running build: 1, labelled with its version and Go version.", "version", "goversion")
	descClients      = desc("tlsproxy_client_connections", "Client connections open now (TLS handshake done).")
	descClientLimit  = desc("tlsproxy_client_connections_limit", "limits.max_clients.")
	descClientTotal  = desc("tlsproxy_client_connections_total", "Client connections that completed the TLS handshake.")
	descHandshake    = desc("tlsproxy_handshake_failures_total", "TLS handshakes refused or abandoned, by reason.", "reason")
	descCommands     = desc("tlsproxy_commands_total", "Commands received from clients, by command (\"other\": unknown to the command table).", "command")
	descCmdErrors    = desc("tlsproxy_command_errors_total", "Error replies Redis sent to clients' commands, by command.", "command")
	descUpConns      = desc("tlsproxy_upstream_connections", "Connections to Redis: shared (multiplexed), pinned (leased to a session), idle.", "kind")
	descDials        = desc("tlsproxy_upstream_dials_total", "Connections to Redis attempted, by result.", "result")
	descUp           = desc("tlsproxy_upstream_up", "1 when Redis answered the proxy's last PING in time, else 0.")
	descPinned       = desc("tlsproxy_pinned_sessions", "Sessions holding a dedicated connection, by reason.", "reason")
	descBytes        = desc("tlsproxy_bytes_total", "Bytes on client connections, TLS included: received from clients, sent to clients.", "direction")
	descDisconnects  = desc("tlsproxy_client_disconnects_total", "Clients the proxy disconnected, by reason.", "reason")
	descRepl         = desc("tlsproxy_replication_streams_total", "Replication streams (SYNC/PSYNC accepted by Redis) carried.")
	descReloads      = desc("tlsproxy_config_reloads_total", "Reloads of the certificates, keys, CA bundles and password file, by result.", "result")
	descCertNotAfter = desc("tlsproxy_certificate_not_after_timestamp_seconds", "Expiry of each certificate the proxy uses (and of the one Redis presents), Unix time.", "role", "subject", "serial")
	descClientCert   = desc("tlsproxy_client_certificate_not_after_timestamp_seconds", "Per client identity, the earliest expiry among the certificates it presented in the last 24 hours, Unix time (the 500 earliest identities).", "identity")
	descExpiring     = desc("tlsproxy_certificate_expiring", "Certificates the proxy uses that are inside tls.expiry_warning or expired.")
	descReloadTime   = desc("tlsproxy_config_last_reload_success_timestamp_seconds", "When the material in use was loaded (start or the last successful reload), Unix time.")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descClients, descClientLimit, descClientTotal, descHandshake,
		descCommands, descCmdErrors, descUpConns, descDials, descUp, descPinned, descBytes, descDisconnects, descRepl,
		descReloads, descReloadTime, descCertNotAfter, descClientCert, descExpiring} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s, st := c.s, c.s.stats
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descBuild, 1, s.version, runtime.Version())
	gauge(descClients, float64(st.active.Load()))
	gauge(descClientLimit, float64(s.limits.Load().MaxClients))
	counter(descClientTotal, st.sessions.Load())
	for reason, n := range s.rejects.snapshot() {
		counter(descHandshake, n, reason)
	}
	for i := range st.commands {
		if n := st.commands[i].Load(); n > 0 {
			counter(descCommands, n, commands.NameOf(i))
		}
		if n := st.errors[i].Load(); n > 0 {
			counter(descCmdErrors, n, commands.NameOf(i))
		}
	}
	shared, pinned, idle := s.upstreamConns()
	gauge(descUpConns, float64(shared), "shared")
	gauge(descUpConns, float64(pinned), "pinned")
	gauge(descUpConns, float64(idle), "idle")
	counter(descDials, st.dials[0].Load(), "success")
	counter(descDials, st.dials[1].Load(), "failure")
	up := 0.0
	if ok, _ := s.upstreamUp(); ok {
		up = 1
	}
	gauge(descUp, up)
	var pins [pinReasons]int
	s.ids.Range(func(_, v any) bool {
		pins[v.(*session).pin.Load()]++
		return true
	})
	for r := pinBlocking; r < pinReasons; r++ {
		gauge(descPinned, float64(pins[r]), pinNames[r])
	}
	in, out := st.bytesIn.Load(), st.bytesOut.Load()
	s.mu.Lock()
	for cc := range s.conns {
		in, out = in+cc.in.Load(), out+cc.out.Load()
	}
	s.mu.Unlock()
	counter(descBytes, in, "received")
	counter(descBytes, out, "sent")
	for r := range st.disconnects {
		counter(descDisconnects, st.disconnects[r].Load(), disconnectNames[r])
	}
	counter(descRepl, st.replication.Load())
	counter(descReloads, st.reloads[0].Load(), "success")
	counter(descReloads, st.reloads[1].Load(), "failure")
	gauge(descReloadTime, float64(s.loadedAt.Load().UnixNano())/1e9)
	now, expiring, warning := time.Now(), 0, s.expiryWarning()
	for _, c := range s.allCerts() {
		gauge(descCertNotAfter, float64(c.NotAfter.Unix()), c.Role, c.Subject, c.Serial)
		if expiryClass(c.NotAfter, now, warning) != "ok" {
			expiring++
		}
	}
	gauge(descExpiring, float64(expiring))
	for _, c := range s.clientCerts.earliest(maxClientMetrics, now) {
		gauge(descClientCert, float64(c.notAfter.Unix()), c.id)
	}
}
