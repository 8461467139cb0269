package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// displayName is how an endpoint is called in the report.
func displayName(ep string) string {
	switch ep {
	case Reference:
		return "Redis-TLS (reference)"
	case calibrationTCP:
		return "tlsproxy → TCP upstream"
	case calibrationUnix:
		return "tlsproxy → unix-socket upstream"
	}
	return ep
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtOpt(v *float64, format string) string {
	if v == nil {
		return "–"
	}
	return fmt.Sprintf(format, *v)
}

// mdEscape keeps free text from breaking a table row.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// Markdown renders RESULTS.md.
func (r *Results) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("# tlsproxy benchmark results\n\n")
	mode := r.meta("mode")
	if mode == "smoke" {
		w("> **Smoke run**: one short round to check that the harness works. The numbers are not meaningful.\n\n")
	}
	if cmd := r.meta("command"); cmd != "" {
		w("Produced by `%s`", cmd)
		if d := r.meta("date"); d != "" {
			w(" on %s", d)
		}
		w(".")
	}
	if rounds, req := r.meta("rounds"), r.meta("requests"); rounds != "" {
		w(" %s round(s); every run sends %s requests per test", rounds, req)
		if cfg := r.meta("configs"); cfg != "" {
			w(" at (clients, pipeline) = %s", cfg)
		}
		w(".")
	}
	w("\n\n")

	r.writeMachine(&b)
	r.writeMethod(&b)
	r.writeTargets(&b)
	r.writeTable(&b)
	r.writeScale(&b)
	r.writeCalibration(&b)
	r.writeEndpoints(&b)

	if len(r.Notes) > 0 {
		w("## Notes\n\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
		w("\n")
	}
	if len(r.Problems) > 0 {
		w("## Problems\n\n")
		for _, p := range r.Problems {
			w("- %s\n", p)
		}
		w("\n")
	}
	return b.String()
}

func (r *Results) writeMachine(b *strings.Builder) {
	fmt.Fprintf(b, "## Machine\n\n| | |\n|---|---|\n")
	rows := []struct{ key, label string }{
		{"cpu_model", "CPU"}, {"nproc", "CPUs (nproc)"}, {"mem_total", "Memory"},
		{"kernel", "Kernel"}, {"os", "OS"}, {"fd_limit", "Open-files limit"},
	}
	for _, row := range rows {
		if v := r.meta(row.key); v != "" {
			fmt.Fprintf(b, "| %s | %s |\n", row.label, mdEscape(v))
		}
	}
	for _, kv := range r.Meta {
		if name, ok := strings.CutPrefix(kv.Key, "version."); ok {
			fmt.Fprintf(b, "| %s | %s |\n", mdEscape(name), mdEscape(kv.Value))
		}
	}
	b.WriteString("\n")
}

func (r *Results) writeMethod(b *strings.Builder) {
	fmt.Fprintf(b, "## Method\n\n")
	if v := r.meta("bench_cmd"); v != "" {
		fmt.Fprintf(b, "- Each run: `%s`.\n", v)
	}
	b.WriteString("- Each round runs every load configuration against every endpoint, the endpoints in a fresh random order " +
		"for each configuration, so machine noise hits all of them alike. Ratios are computed against Redis-TLS " +
		"*in the same round* and the table shows their median over rounds.\n")
	for _, kv := range []struct{ key, text string }{
		{"upstream", "- Proxies reach the plain upstream Redis over: **%s**"},
		{"cert_source", "- Certificates: %s; every TLS endpoint requires and verifies a client certificate (checked at start: a client without one is refused)."},
		{"cpu_note", "- %s"},
	} {
		if v := r.meta(kv.key); v != "" {
			fmt.Fprintf(b, kv.text, v)
			if kv.key == "upstream" {
				if how := r.meta("upstream_how"); how != "" {
					fmt.Fprintf(b, " (%s)", how)
				}
				b.WriteString(".")
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")
}

func (r *Results) writeTargets(b *strings.Builder) {
	proxies := r.proxies()
	fmt.Fprintf(b, "## Targets\n\nThe targets are for tlsproxy; the other proxies are evaluated the same way for comparison.\n\n")
	if len(proxies) == 0 {
		proxies = []string{TargetProxy}
	}
	b.WriteString("| Target |")
	for _, p := range proxies {
		fmt.Fprintf(b, " %s |", displayName(p))
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(proxies)) + "\n")
	for _, t := range r.Targets {
		fmt.Fprintf(b, "| %s |", t.Name)
		for _, p := range proxies {
			st, ok := t.Status[p]
			if !ok {
				b.WriteString(" – |")
				continue
			}
			if st == statusMet {
				st = "**met**"
			}
			if d := t.Detail[p]; d != "" {
				st += " (" + mdEscape(d) + ")"
			}
			fmt.Fprintf(b, " %s |", st)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func (r *Results) writeTable(b *strings.Builder) {
	fmt.Fprintf(b, "## Throughput and latency\n\n![Throughput relative to Redis-TLS](ratios.svg)\n\n")
	b.WriteString("| Test | Clients | Pipeline | Endpoint | rps (median) | rps × Redis-TLS (median, min–max) | p50 ms | p99 ms | p99 × Redis-TLS | CPU µs/req (TLS process + upstream) | Failed runs |\n")
	b.WriteString("|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Summary {
		ratio := fmtOpt(s.Ratio, "%.2f")
		if s.Ratio != nil && s.RatioMin != nil && s.Endpoint != Reference {
			ratio += fmt.Sprintf(" (%.2f–%.2f)", *s.RatioMin, *s.RatioMax)
		}
		cpu := fmtOpt(s.CPUUs, "%.1f")
		if s.CPUUs != nil && s.UpstreamCPUUs != nil {
			cpu += fmt.Sprintf(" (%.1f + %.1f)", *s.ServerCPUUs, *s.UpstreamCPUUs)
		}
		rps, p50, p99 := "–", "–", "–"
		if s.Rounds > 0 {
			rps, p50, p99 = thousands(s.RPS), fmt.Sprintf("%.3f", s.P50Ms), fmt.Sprintf("%.3f", s.P99Ms)
		}
		fmt.Fprintf(b, "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %d |\n",
			s.Test, s.Clients, s.Pipeline, displayName(s.Endpoint), rps, ratio, p50, p99,
			fmtOpt(s.P99Ratio, "%.2f"), cpu, s.ErrorRuns)
	}
	b.WriteString("\nHow to read: *rps × Redis-TLS* above 1 means faster than Redis doing TLS itself; " +
		"*p99 × Redis-TLS* below 1 means a lower tail latency. The min–max spread shows how much the ratio moved between rounds; " +
		"a spread that straddles a target means the result is within noise. CPU is summed over the process that terminates TLS " +
		"and, for proxies, the plain Redis behind it, per request of the run (SET and GET together); it excludes redis-benchmark.\n\n")
}

func (r *Results) writeScale(b *strings.Builder) {
	if len(r.Scale) == 0 {
		return
	}
	b.WriteString("## Scale\n\n")
	b.WriteString("Memory: RSS of the endpoint process before and while holding idle mTLS connections (each proved live with a PING). " +
		"Handshakes: new connections per second, each a full mTLS handshake + PING + close, from the same Go client on the same machine " +
		"(the client's own TLS work competes for the CPUs, so compare the ratio rather than the absolute rate).\n\n")
	b.WriteString("| Endpoint | Idle conns | RSS before MiB | RSS with conns MiB | KiB per conn | Handshakes/s | × Redis-TLS | CPU µs per handshake | Handshake p50 / p99 ms | TLS | Errors |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n")
	var ref float64
	for _, s := range r.Scale {
		if s.Label == Reference {
			ref = s.HandshakesPerSec
		}
	}
	scale := slices.Clone(r.Scale)
	slices.SortStableFunc(scale, func(a, b Scale) int { return compareEndpoints(a.Label, b.Label) })
	for _, s := range scale {
		ratio := "–"
		if ref > 0 && s.HandshakesPerSec > 0 {
			ratio = fmt.Sprintf("%.2f", s.HandshakesPerSec/ref)
		}
		fmt.Fprintf(b, "| %s | %s | %.1f | %.1f | %.1f | %s | %s | %.0f | %.2f / %.2f | %s %s | %d |\n",
			displayName(s.Label), thousands(float64(s.ConnsOpen)), s.RSSBeforeMiB, s.RSSAfterMiB, s.PerConnKiB,
			thousands(s.HandshakesPerSec), ratio, s.CPUUsPerHandshake, s.HandshakeP50Ms, s.HandshakeP99Ms,
			s.TLSVersion, s.Cipher, s.ConnErrors+int(s.HandshakeErrors))
	}
	b.WriteString("\n")
}

func (r *Results) writeCalibration(b *strings.Builder) {
	c := r.Calibration
	if c == nil {
		return
	}
	b.WriteString("## tlsproxy upstream transport\n\n")
	fmt.Fprintf(b, "Before the rounds, tlsproxy was measured with a TCP and with a unix-socket upstream (same Redis), interleaved. "+
		"Median unix/tcp throughput ratio: **%.3f** → chose **%s** (unix only when strictly faster).\n\n", c.Score, c.Choice)
	b.WriteString("| Test | Clients | Pipeline | Upstream | rps (median) | p50 ms | p99 ms | CPU µs/req |\n|---|--:|--:|---|--:|--:|--:|--:|\n")
	all := append(slices.Clone(c.TCP), c.Unix...)
	slices.SortStableFunc(all, func(a, b Summary) int { return compareCells(a.Cell, b.Cell) })
	for _, s := range all {
		fmt.Fprintf(b, "| %s | %d | %d | %s | %s | %.3f | %.3f | %s |\n", s.Test, s.Clients, s.Pipeline,
			strings.TrimPrefix(s.Endpoint, "tlsproxy-"), thousands(s.RPS), s.P50Ms, s.P99Ms, fmtOpt(s.CPUUs, "%.1f"))
	}
	b.WriteString("\n")
}

func (r *Results) writeEndpoints(b *strings.Builder) {
	if len(r.Endpoints) == 0 {
		return
	}
	b.WriteString("## Endpoints\n\n| Endpoint | Status | TLS | Note |\n|---|---|---|---|\n")
	for _, e := range r.Endpoints {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", displayName(e.Name), e.Status,
			mdEscape(strings.TrimSpace(e.Protocol+" "+e.Cipher)), mdEscape(e.Note))
	}
	b.WriteString("\n")
}

// palette colours the proxies in the chart, in endpoint order.
var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}

// SVG renders a grouped bar chart: one group per cell, one bar per proxy
// showing its median rps ratio to Redis-TLS, a whisker for the min–max over
// rounds, and a dashed line at 1.0 (Redis-TLS itself).
func (r *Results) SVG() string {
	const (
		barW, groupGap   = 18.0, 26.0
		left, right      = 56.0, 20.0
		top, plotH       = 64.0, 260.0
		bottomLabelSpace = 60.0
	)
	proxies := r.proxies()
	var cells []Cell
	for _, c := range r.Cells {
		for _, p := range proxies {
			if s, ok := r.summary(p, c); ok && s.Ratio != nil {
				cells = append(cells, c)
				break
			}
		}
	}
	groupW := math.Max(float64(max(1, len(proxies)))*barW+groupGap, 88)
	width := left + right + math.Max(float64(len(cells))*groupW, 560)
	height := top + plotH + bottomLabelSpace

	ymax := 1.2
	for _, p := range proxies {
		for _, c := range cells {
			if s, ok := r.summary(p, c); ok && s.RatioMax != nil {
				ymax = math.Max(ymax, *s.RatioMax*1.08)
			}
		}
	}
	step := 0.2
	if ymax > 3 {
		step = 0.5
	}
	ymax = math.Ceil(ymax/step) * step
	y := func(v float64) float64 { return top + plotH - v/ymax*plotH }

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n",
		width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	title := "Throughput relative to Redis-TLS"
	if r.meta("mode") == "smoke" {
		title += " (SMOKE RUN, not meaningful)"
	}
	w(`<text x="%.0f" y="16" font-size="13" font-weight="bold">%s</text>`+"\n", left, xmlEscape(title))
	w(`<text x="%.0f" y="%.0f" font-size="10" fill="#555">bars: median over rounds of rps ÷ Redis-TLS rps in the same round; whiskers: min–max</text>`+"\n",
		left, top+plotH+48)

	// Legend.
	lx := left
	for i, p := range proxies {
		w(`<rect x="%.1f" y="28" width="12" height="12" fill="%s"/>`, lx, palette[i%len(palette)])
		w(`<text x="%.1f" y="38">%s</text>`+"\n", lx+16, xmlEscape(p))
		lx += 24 + 7*float64(len(p))
	}
	w(`<line x1="%.1f" y1="34" x2="%.1f" y2="34" stroke="#d62728" stroke-dasharray="5,3"/>`, lx, lx+22)
	w(`<text x="%.1f" y="38">Redis-TLS = 1.0</text>`+"\n", lx+26)

	// Axes and grid.
	for v := 0.0; v <= ymax+1e-9; v += step {
		w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e5e5e5"/>`, left, y(v), width-right, y(v))
		w(`<text x="%.1f" y="%.1f" text-anchor="end">%.1f</text>`+"\n", left-6, y(v)+4, v)
	}
	w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top, left, top+plotH)
	w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, top+plotH, width-right, top+plotH)
	w(`<text x="14" y="%.1f" transform="rotate(-90 14 %.1f)" text-anchor="middle">rps ÷ Redis-TLS rps</text>`+"\n",
		top+plotH/2, top+plotH/2)

	if len(cells) == 0 {
		w(`<text x="%.1f" y="%.1f" text-anchor="middle" fill="#888">no ratios to show</text>`+"\n", left+(width-left-right)/2, top+plotH/2)
	}
	for gi, c := range cells {
		gx := left + float64(gi)*groupW + (groupW-float64(len(proxies))*barW)/2
		for pi, p := range proxies {
			s, ok := r.summary(p, c)
			if !ok || s.Ratio == nil {
				continue
			}
			x := gx + float64(pi)*barW
			v := *s.Ratio
			w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.3f</title></rect>`+"\n",
				x+1, y(v), barW-2, top+plotH-y(v), palette[pi%len(palette)], xmlEscape(p), xmlEscape(c.String()), v)
			if s.RatioMin != nil && s.RatioMax != nil && *s.RatioMax > *s.RatioMin {
				cx := x + barW/2
				w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", cx, y(*s.RatioMin), cx, y(*s.RatioMax))
			}
			w(`<text x="%.1f" y="%.1f" font-size="8" text-anchor="middle">%.2f</text>`+"\n",
				x+barW/2, math.Min(y(v), y(ptrOr(s.RatioMax, v)))-3, v)
		}
		cx := gx + float64(len(proxies))*barW/2
		w(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, cx, top+plotH+16, xmlEscape(c.Test))
		w(`<text x="%.1f" y="%.1f" text-anchor="middle" fill="#555">c=%d P=%d</text>`+"\n", cx, top+plotH+30, c.Clients, c.Pipeline)
	}
	w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,3"/>`+"\n",
		left, y(1), width-right, y(1))
	w("</svg>\n")
	return b.String()
}

func ptrOr(p *float64, v float64) float64 {
	if p == nil {
		return v
	}
	return *p
}
