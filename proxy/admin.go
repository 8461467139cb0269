package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The admin endpoint: /metrics, /healthz, /readyz, /status and a status
// page at /. It listens on admin.address (loopback by default).

// ServeAdmin serves the admin endpoint on ln until ctx is done. It speaks
// HTTPS when admin.tls is configured.
func (s *Server) ServeAdmin(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.AdminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
	}
	if s.adminTLS.Load() != nil {
		// Each handshake takes the configuration of the moment (reloads).
		ln = tls.NewListener(ln, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.adminTLS.Load(), nil
		}})
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	})
	defer stop()
	s.log.Info().Str("address", ln.Addr().String()).Bool("tls", s.adminTLS.Load() != nil).Msg("admin endpoint listening")
	if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// AdminHandler is the admin endpoint's handler.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ok, reason := s.ready(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, reason)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.status())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var page bytes.Buffer
		if err := statusPage.Execute(&page, s.status()); err != nil {
			s.log.Error().Err(err).Msg("status page")
			http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		w.Write(page.Bytes())
	})
	return mux
}

// ready reports whether the proxy should get traffic: listening, not
// draining, and Redis answering PING.
func (s *Server) ready() (bool, string) {
	switch {
	case s.draining.Load():
		return false, "draining: shutting down"
	case !s.listening.Load():
		return false, "not listening yet"
	}
	if ok, reason := s.upstreamUp(); !ok {
		return false, reason
	}
	return true, ""
}

// status is what /status and the status page show.
type status struct {
	State       string      `json:"state"` // serving, draining, starting
	Version     string      `json:"version"`
	Listen      string      `json:"listen"`
	Upstream    upstreamSt  `json:"upstream"`
	Connections connections `json:"connections"`
	StartedAt   time.Time   `json:"started_at"`
	// LastReload is when the certificates, keys and password in use were
	// loaded: at start or by the last successful reload.
	LastReload   time.Time  `json:"last_reload"`
	Certificates []certInfo `json:"certificates"`
	// ExpiryWarningDays is tls.expiry_warning in days.
	ExpiryWarningDays int       `json:"expiry_warning_days"`
	Now               time.Time `json:"-"` // when the status was taken
}

type upstreamSt struct {
	Address   string `json:"address"`
	Network   string `json:"network"`
	Encrypted bool   `json:"encrypted"`
	Up        bool   `json:"up"`
	Reason    string `json:"reason,omitempty"`
}

type connections struct {
	Clients        int64 `json:"clients"`
	MaxClients     int   `json:"max_clients"`
	UpstreamShared int   `json:"upstream_shared"`
	UpstreamPinned int   `json:"upstream_pinned"`
	UpstreamIdle   int   `json:"upstream_idle"`
}

func (s *Server) status() status {
	st := status{
		State:      "starting",
		Version:    s.version,
		Listen:     s.cfg.Listen.Address,
		StartedAt:  s.started,
		LastReload: *s.loadedAt.Load(),
		Now:        time.Now(),
	}
	switch {
	case s.draining.Load():
		st.State = "draining"
	case s.listening.Load():
		st.State = "serving"
	}
	if a := s.listenAddr.Load(); a != nil {
		st.Listen = *a
	}
	st.Upstream = upstreamSt{Address: s.target.Address, Network: s.target.Network, Encrypted: s.target.TLS}
	st.Upstream.Up, st.Upstream.Reason = s.upstreamUp()
	st.Connections = connections{Clients: s.stats.active.Load(), MaxClients: s.limits.Load().MaxClients}
	c := &st.Connections
	c.UpstreamShared, c.UpstreamPinned, c.UpstreamIdle = s.upstreamConns()
	warning := s.expiryWarning()
	st.ExpiryWarningDays = int(warning.Hours() / 24)
	for _, c := range s.allCerts() {
		c.DaysLeft = daysLeft(c.NotAfter, st.Now)
		c.Expiry = expiryClass(c.NotAfter, st.Now, warning)
		st.Certificates = append(st.Certificates, c)
	}
	return st
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"date": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tlsproxy {{.Listen}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f4f4f4}
.ok{background:#dff5e1}.warning{background:#fff3cd}.critical,.expired,.down{background:#f8d7da}.up{background:#dff5e1}
</style></head><body>
<h1>tlsproxy</h1>
<table id="summary">
<tr><th>state</th><td id="state">{{.State}}</td></tr>
<tr><th>version</th><td id="version">{{.Version}}</td></tr>
<tr><th>listening on</th><td id="listen">{{.Listen}}</td></tr>
<tr><th>client connections</th><td id="clients">{{.Connections.Clients}} of {{.Connections.MaxClients}}</td></tr>
<tr><th>upstream</th><td id="upstream">{{.Upstream.Network}} {{.Upstream.Address}}</td></tr>
<tr><th>upstream link</th><td id="upstream-link">{{if .Upstream.Encrypted}}encrypted (TLS){{else}}not encrypted{{end}}</td></tr>
<tr><th>upstream state</th><td id="upstream-state" class="{{if .Upstream.Up}}up{{else}}down{{end}}">{{if .Upstream.Up}}up{{else}}down: {{.Upstream.Reason}}{{end}}</td></tr>
<tr><th>upstream connections</th><td id="upstream-conns">{{.Connections.UpstreamShared}} shared, {{.Connections.UpstreamPinned}} pinned, {{.Connections.UpstreamIdle}} idle</td></tr>
<tr><th>started</th><td>{{date .StartedAt}}</td></tr>
<tr><th>certificates loaded</th><td>{{date .LastReload}}</td></tr>
</table>
<h2>Certificates</h2>
<table id="certificates">
<tr><th>role</th><th>subject</th><th>serial</th><th>not after</th><th>days left</th><th>file</th></tr>
{{range .Certificates}}<tr class="{{.Expiry}}"><td>{{.Role}}</td><td>{{.Subject}}</td><td>{{.Serial}}</td><td>{{date .NotAfter}}</td><td class="days">{{.DaysLeft}}</td><td>{{.File}}</td></tr>
{{end}}</table>
<p>Rows are coloured by the expiry policy: rotate {{.ExpiryWarningDays}} days before expiry (tls.expiry_warning, yellow), critical under 14 days or expired (red). Machine-readable: <a href="/status">/status</a>, <a href="/metrics">/metrics</a>.</p>
</body></html>
`))
