package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Thresholds of the targets, as ratios to Redis-TLS.
const (
	TargetP1Ratio      = 0.9   // rps at P=1, 50 clients
	TargetPipeRatio    = 1.0   // rps at P=16
	TargetP99Ratio     = 1.5   // p99 latency at P=1, 50 clients (at most)
	TargetManyRatio    = 0.8   // rps at P=1 with the most clients (1,000)
	TargetRSSMiB       = 300.0 // proxy RSS holding TargetIdleConns idle connections
	TargetIdleConns    = 10000
	TargetProxy        = "tlsproxy"
	calibrationTCP     = "tlsproxy-tcp"
	calibrationUnix    = "tlsproxy-unix"
	statusMet          = "met"
	statusNotMet       = "NOT met"
	statusNotMeasured  = "not measured"
	statusNotEvaluated = "not evaluated"
)

// Median returns the median of xs (mean of the two middle values for an even
// count) and false when xs is empty. xs is not modified.
func Median(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], true
	}
	return (s[n/2-1] + s[n/2]) / 2, true
}

// GeoMean returns the geometric mean of positive xs.
func GeoMean(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	sum := 0.0
	for _, x := range xs {
		if x <= 0 {
			return 0, false
		}
		sum += math.Log(x)
	}
	return math.Exp(sum / float64(len(xs))), true
}

// Cell identifies one measured combination of test and load.
type Cell struct {
	Test     string `json:"test"`
	Clients  int    `json:"clients"`
	Pipeline int    `json:"pipeline"`
}

func (c Cell) String() string { return fmt.Sprintf("%s c=%d P=%d", c.Test, c.Clients, c.Pipeline) }

// splitTests turns redis-benchmark's -t argument ("set,get") into the test
// names its CSV uses ("SET", "GET").
func splitTests(s string) []string {
	var out []string
	for name := range strings.SplitSeq(s, ",") {
		if name = strings.ToUpper(strings.TrimSpace(name)); name != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// Summary aggregates all bench rounds of one endpoint in one cell. Optional
// values are nil when they could not be computed.
type Summary struct {
	Endpoint string `json:"endpoint"`
	Cell
	Rounds    int     `json:"rounds"` // rounds with numbers
	ErrorRuns int     `json:"error_runs"`
	RPS       float64 `json:"rps_median"`
	P50Ms     float64 `json:"p50_ms_median"`
	P99Ms     float64 `json:"p99_ms_median"`
	// Ratios to the reference in the same round; the median over rounds and
	// the spread.
	Ratio    *float64 `json:"rps_ratio_median,omitempty"`
	RatioMin *float64 `json:"rps_ratio_min,omitempty"`
	RatioMax *float64 `json:"rps_ratio_max,omitempty"`
	P99Ratio *float64 `json:"p99_ratio_median,omitempty"`
	// CPU microseconds per request of the whole run (SET and GET together):
	// TLS-terminating process, plain upstream Redis, and their sum.
	ServerCPUUs   *float64 `json:"server_cpu_us_per_req,omitempty"`
	UpstreamCPUUs *float64 `json:"upstream_cpu_us_per_req,omitempty"`
	CPUUs         *float64 `json:"cpu_us_per_req,omitempty"`
}

// Calibration compares tlsproxy with a TCP and a unix-socket upstream.
type Calibration struct {
	TCP    []Summary `json:"tcp,omitempty"`
	Unix   []Summary `json:"unix,omitempty"`
	Score  float64   `json:"unix_over_tcp"` // median over reps of the geomean of unix/tcp rps
	Choice string    `json:"choice"`        // "unix", "tcp" or "" without data
}

// Target is one goal, evaluated for each proxy endpoint.
type Target struct {
	Name   string            `json:"name"`
	Status map[string]string `json:"status"` // endpoint -> met / NOT met / ...
	Detail map[string]string `json:"detail"` // endpoint -> numbers behind it
}

// Results is everything the report writes.
type Results struct {
	Meta        []KV         `json:"meta"`
	Endpoints   []Endpoint   `json:"endpoints"`
	Notes       []string     `json:"notes,omitempty"`
	Cells       []Cell       `json:"cells"`
	Rounds      int          `json:"rounds"`
	Summary     []Summary    `json:"summary"`
	Calibration *Calibration `json:"calibration,omitempty"`
	Targets     []Target     `json:"targets"`
	Scale       []Scale      `json:"scale,omitempty"`
	Problems    []string     `json:"problems,omitempty"`
	Runs        []Run        `json:"runs"`
}

// JSON renders r indented.
func (r *Results) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func (r *Results) meta(key string) string {
	for _, kv := range r.Meta {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// endpointRank orders endpoints: reference, tlsproxy, known proxies, rest.
func endpointRank(name string) int {
	switch name {
	case Reference:
		return 0
	case TargetProxy:
		return 1
	case "stunnel":
		return 2
	case "haproxy":
		return 3
	case "ghostunnel":
		return 4
	}
	return 5
}

func compareEndpoints(a, b string) int {
	return cmp.Or(cmp.Compare(endpointRank(a), endpointRank(b)), cmp.Compare(a, b))
}

// testRank orders SET before GET, then the rest alphabetically.
func compareTests(a, b string) int {
	rank := func(t string) int {
		switch t {
		case "SET":
			return 0
		case "GET":
			return 1
		}
		return 2
	}
	return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b))
}

// compareCells orders by load (clients, then pipeline), then test.
func compareCells(a, b Cell) int {
	return cmp.Or(cmp.Compare(a.Clients, b.Clients), cmp.Compare(a.Pipeline, b.Pipeline), compareTests(a.Test, b.Test))
}

// sample is one endpoint's numbers in one cell of one round.
type sample struct {
	row      Row
	cpuUs    [2]float64 // server, upstream; <0 unknown
	hasError bool
}

// table indexes runs of one phase: endpoint -> cell -> round -> sample.
type table map[string]map[Cell]map[int]sample

func buildTable(runs []Run, phase string) (table, map[string]map[Cell]int) {
	t := table{}
	errs := map[string]map[Cell]int{}
	for _, r := range runs {
		if r.Phase != phase {
			continue
		}
		var cpu [2]float64
		nreq := r.Requests * len(splitTests(r.Tests))
		for i, ticks := range []int64{r.ServerTicks, r.UpstreamTicks} {
			cpu[i] = -1
			if ticks >= 0 && r.ClkTck > 0 && nreq > 0 {
				cpu[i] = float64(ticks) * 1e6 / float64(r.ClkTck) / float64(nreq)
			}
		}
		if t[r.Endpoint] == nil {
			t[r.Endpoint] = map[Cell]map[int]sample{}
			errs[r.Endpoint] = map[Cell]int{}
		}
		tests := splitTests(r.Tests)
		for _, row := range r.Rows {
			if !slices.Contains(tests, row.Test) {
				tests = append(tests, row.Test)
			}
		}
		for _, test := range tests {
			c := Cell{Test: test, Clients: r.Clients, Pipeline: r.Pipeline}
			if len(r.Errors) > 0 {
				errs[r.Endpoint][c]++
			}
			row, ok := r.Row(test)
			if !ok {
				continue
			}
			if t[r.Endpoint][c] == nil {
				t[r.Endpoint][c] = map[int]sample{}
			}
			t[r.Endpoint][c][r.Round] = sample{row: row, cpuUs: cpu, hasError: len(r.Errors) > 0}
		}
	}
	return t, errs
}

// summarize computes the Summary of every endpoint × cell in t, with ratios
// against ref (which must be a key of t to get ratios).
func summarize(t table, errs map[string]map[Cell]int, ref string) []Summary {
	var out []Summary
	for ep, cells := range t {
		for c, rounds := range cells {
			s := Summary{Endpoint: ep, Cell: c, Rounds: len(rounds), ErrorRuns: errs[ep][c]}
			var rps, p50, p99, ratios, p99r, cpuS, cpuU, cpuT []float64
			for round, smp := range rounds {
				rps = append(rps, smp.row.RPS)
				p50 = append(p50, smp.row.P50Ms)
				p99 = append(p99, smp.row.P99Ms)
				if smp.cpuUs[0] >= 0 {
					cpuS = append(cpuS, smp.cpuUs[0])
					total := smp.cpuUs[0]
					if smp.cpuUs[1] >= 0 {
						cpuU = append(cpuU, smp.cpuUs[1])
						total += smp.cpuUs[1]
					}
					cpuT = append(cpuT, total)
				}
				if refSmp, ok := t[ref][c][round]; ok && refSmp.row.RPS > 0 {
					ratios = append(ratios, smp.row.RPS/refSmp.row.RPS)
					if refSmp.row.P99Ms > 0 {
						p99r = append(p99r, smp.row.P99Ms/refSmp.row.P99Ms)
					}
				}
			}
			s.RPS, _ = Median(rps)
			s.P50Ms, _ = Median(p50)
			s.P99Ms, _ = Median(p99)
			s.Ratio = optMedian(ratios)
			if len(ratios) > 0 {
				s.RatioMin = ptr(slices.Min(ratios))
				s.RatioMax = ptr(slices.Max(ratios))
			}
			s.P99Ratio = optMedian(p99r)
			s.ServerCPUUs = optMedian(cpuS)
			s.UpstreamCPUUs = optMedian(cpuU)
			s.CPUUs = optMedian(cpuT)
			out = append(out, s)
		}
	}
	// Cells where an endpoint only failed still deserve a row.
	for ep, cells := range errs {
		for c, n := range cells {
			if _, ok := t[ep][c]; !ok && n > 0 {
				out = append(out, Summary{Endpoint: ep, Cell: c, ErrorRuns: n})
			}
		}
	}
	slices.SortFunc(out, func(a, b Summary) int {
		return cmp.Or(compareCells(a.Cell, b.Cell), compareEndpoints(a.Endpoint, b.Endpoint))
	})
	return out
}

func optMedian(xs []float64) *float64 {
	if m, ok := Median(xs); ok {
		return &m
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Calibrate compares the calibration runs of tlsproxy-unix against
// tlsproxy-tcp: for each repetition (round) the geometric mean over cells of
// the unix/tcp rps ratio, then the median over repetitions. Unix wins only
// when strictly faster. With data for one variant only, that one is chosen.
func Calibrate(runs []Run) *Calibration {
	t, errs := buildTable(runs, "calibration")
	c := &Calibration{}
	for _, s := range summarize(t, errs, calibrationTCP) {
		switch s.Endpoint {
		case calibrationTCP:
			c.TCP = append(c.TCP, s)
		case calibrationUnix:
			c.Unix = append(c.Unix, s)
		}
	}
	tcp, unix := t[calibrationTCP], t[calibrationUnix]
	switch {
	case len(tcp) == 0 && len(unix) == 0:
		return c
	case len(unix) == 0:
		c.Choice = "tcp"
		return c
	case len(tcp) == 0:
		c.Choice = "unix"
		return c
	}
	perRound := map[int][]float64{}
	for cell, rounds := range unix {
		for round, u := range rounds {
			if tc, ok := tcp[cell][round]; ok && tc.row.RPS > 0 && u.row.RPS > 0 {
				perRound[round] = append(perRound[round], u.row.RPS/tc.row.RPS)
			}
		}
	}
	var scores []float64
	for _, ratios := range perRound {
		if g, ok := GeoMean(ratios); ok {
			scores = append(scores, g)
		}
	}
	score, ok := Median(scores)
	if !ok {
		c.Choice = "tcp"
		return c
	}
	c.Score = score
	c.Choice = "tcp"
	if score > 1 {
		c.Choice = "unix"
	}
	return c
}

// Analyze computes summaries, targets and problems.
func Analyze(d *Data) *Results {
	res := &Results{Meta: d.Meta, Endpoints: d.Endpoints, Notes: d.Notes, Runs: d.Runs, Scale: d.Scale}
	t, errs := buildTable(d.Runs, "bench")
	res.Summary = summarize(t, errs, Reference)

	cellSet := map[Cell]bool{}
	for _, r := range d.Runs {
		if r.Phase != "bench" {
			continue
		}
		res.Rounds = max(res.Rounds, r.Round)
		for _, name := range splitTests(r.Tests) {
			cellSet[Cell{Test: name, Clients: r.Clients, Pipeline: r.Pipeline}] = true
		}
	}
	if n, err := strconv.Atoi(d.MetaValue("rounds")); err == nil && n > res.Rounds {
		res.Rounds = n
	}
	for c := range cellSet {
		res.Cells = append(res.Cells, c)
	}
	slices.SortFunc(res.Cells, compareCells)

	if cal := Calibrate(d.Runs); cal.Choice != "" {
		res.Calibration = cal
	}
	res.Targets = evalTargets(res)
	res.Problems = findProblems(res, t)
	return res
}

// proxies returns the endpoints with bench data other than the reference.
func (r *Results) proxies() []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range r.Summary {
		if s.Endpoint != Reference && !seen[s.Endpoint] {
			seen[s.Endpoint] = true
			out = append(out, s.Endpoint)
		}
	}
	slices.SortFunc(out, compareEndpoints)
	return out
}

func (r *Results) summary(ep string, c Cell) (Summary, bool) {
	for _, s := range r.Summary {
		if s.Endpoint == ep && s.Cell == c {
			return s, true
		}
	}
	return Summary{}, false
}

// loadCells splits the cells into the groups the targets talk about: P=1
// with the fewest clients, pipelined, and P=1 with the most clients (only
// when that differs from the fewest).
func (r *Results) loadCells() (p1, piped, many []Cell) {
	minC, maxC := math.MaxInt, 0
	for _, c := range r.Cells {
		if c.Pipeline == 1 {
			minC, maxC = min(minC, c.Clients), max(maxC, c.Clients)
		}
	}
	for _, c := range r.Cells {
		switch {
		case c.Pipeline > 1:
			piped = append(piped, c)
		case c.Clients == minC:
			p1 = append(p1, c)
		case c.Clients == maxC:
			many = append(many, c)
		}
	}
	return p1, piped, many
}

func evalTargets(r *Results) []Target {
	p1, piped, many := r.loadCells()
	clients := func(cs []Cell) string {
		if len(cs) == 0 {
			return "?"
		}
		return strconv.Itoa(cs[0].Clients)
	}
	type check struct {
		name     string
		cells    []Cell
		value    func(Summary) *float64
		ok       func(float64) bool
		noErrors bool
	}
	checks := []check{
		{
			name:  fmt.Sprintf("rps at P=1 (%s clients) ≥ %.1f× Redis-TLS", clients(p1), TargetP1Ratio),
			cells: p1, value: func(s Summary) *float64 { return s.Ratio },
			ok: func(v float64) bool { return v >= TargetP1Ratio },
		},
		{
			name:  fmt.Sprintf("rps at P=%s ≥ %.1f× Redis-TLS", pipelines(piped), TargetPipeRatio),
			cells: piped, value: func(s Summary) *float64 { return s.Ratio },
			ok: func(v float64) bool { return v >= TargetPipeRatio },
		},
		{
			name:  fmt.Sprintf("p99 latency at P=1 (%s clients) ≤ %.1f× Redis-TLS", clients(p1), TargetP99Ratio),
			cells: p1, value: func(s Summary) *float64 { return s.P99Ratio },
			ok: func(v float64) bool { return v <= TargetP99Ratio },
		},
		{
			name:  fmt.Sprintf("rps at P=1 with %s clients ≥ %.1f× Redis-TLS, no errors", clients(many), TargetManyRatio),
			cells: many, value: func(s Summary) *float64 { return s.Ratio },
			ok: func(v float64) bool { return v >= TargetManyRatio }, noErrors: true,
		},
	}
	var out []Target
	for _, ck := range checks {
		tg := Target{Name: ck.name, Status: map[string]string{}, Detail: map[string]string{}}
		for _, ep := range r.proxies() {
			if len(ck.cells) == 0 {
				tg.Status[ep] = statusNotMeasured
				continue
			}
			met, measured := true, true
			var parts []string
			for _, c := range ck.cells {
				s, ok := r.summary(ep, c)
				v := (*float64)(nil)
				if ok {
					v = ck.value(s)
				}
				if v == nil {
					measured = false
					parts = append(parts, c.Test+" –")
					continue
				}
				parts = append(parts, fmt.Sprintf("%s %.2f", c.Test, *v))
				if !ck.ok(*v) {
					met = false
				}
				if ck.noErrors && s.ErrorRuns > 0 {
					met = false
					parts = append(parts, fmt.Sprintf("%d failed runs", s.ErrorRuns))
				}
			}
			tg.Detail[ep] = strings.Join(parts, ", ")
			switch {
			case !measured:
				tg.Status[ep] = statusNotMeasured
			case met:
				tg.Status[ep] = statusMet
			default:
				tg.Status[ep] = statusNotMet
			}
		}
		out = append(out, tg)
	}

	// Memory: only tlsproxy is measured by the scale tool.
	mem := Target{
		Name:   fmt.Sprintf("RSS holding %d idle mTLS connections ≤ %.0f MiB", TargetIdleConns, TargetRSSMiB),
		Status: map[string]string{TargetProxy: statusNotMeasured},
		Detail: map[string]string{},
	}
	for _, s := range r.Scale {
		if s.Label != TargetProxy || s.Conns == 0 {
			continue
		}
		mem.Detail[TargetProxy] = fmt.Sprintf("%.1f MiB with %d connections", s.RSSAfterMiB, s.ConnsOpen)
		switch {
		case s.ConnErrors > 0 || s.ConnsOpen == 0:
			mem.Status[TargetProxy] = statusNotMet
			mem.Detail[TargetProxy] += fmt.Sprintf(", %d failed", s.ConnErrors)
		case s.ConnsOpen < TargetIdleConns:
			mem.Status[TargetProxy] = statusNotEvaluated
			mem.Detail[TargetProxy] += fmt.Sprintf(", fewer than %d", TargetIdleConns)
		case s.RSSAfterMiB <= TargetRSSMiB:
			mem.Status[TargetProxy] = statusMet
		default:
			mem.Status[TargetProxy] = statusNotMet
		}
	}
	return append(out, mem)
}

func pipelines(cs []Cell) string {
	var ps []string
	for _, c := range cs {
		p := strconv.Itoa(c.Pipeline)
		if !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return "16"
	}
	return strings.Join(ps, ",")
}

// findProblems lists what makes a run unusable: failed benchmark runs, a
// started endpoint without numbers for some cell and round, and scale
// errors.
func findProblems(r *Results, t table) []string {
	var out []string
	for _, run := range r.Runs {
		if len(run.Errors) > 0 {
			out = append(out, fmt.Sprintf("%s run %d (%s, round %d, c=%d P=%d): %s",
				run.Phase, run.Seq, run.Endpoint, run.Round, run.Clients, run.Pipeline, strings.Join(run.Errors, "; ")))
		}
	}
	if _, ok := t[Reference]; !ok {
		out = append(out, "no numbers for the reference "+Reference)
	}
	for _, ep := range r.Endpoints {
		if ep.Status != "ok" {
			continue
		}
		for _, c := range r.Cells {
			got := len(t[ep.Name][c])
			if got < r.Rounds {
				out = append(out, fmt.Sprintf("%s: numbers for %d of %d rounds in %s", ep.Name, got, r.Rounds, c))
			}
		}
	}
	for _, s := range r.Scale {
		if s.ConnErrors > 0 {
			out = append(out, fmt.Sprintf("scale %s: %d of %d connections failed: %s", s.Label, s.ConnErrors, s.Conns, s.ConnFirstError))
		}
		if s.HandshakeErrors > 0 {
			out = append(out, fmt.Sprintf("scale %s: %d handshakes failed: %s", s.Label, s.HandshakeErrors, s.HandshakeFirstErr))
		}
	}
	return out
}
