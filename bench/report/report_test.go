package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
		ok   bool
	}{
		{nil, 0, false},
		{[]float64{5}, 5, true},
		{[]float64{3, 1, 2}, 2, true},
		{[]float64{4, 1, 3, 2}, 2.5, true},
		{[]float64{1, 1, 100}, 1, true},
	} {
		in := slices.Clone(tc.in)
		got, ok := Median(in)
		if ok != tc.ok || !near(got, tc.want) {
			t.Errorf("Median(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("Median modified its input: %v", in)
		}
	}
}

func TestGeoMean(t *testing.T) {
	if g, ok := GeoMean([]float64{0.5, 2}); !ok || !near(g, 1) {
		t.Errorf("GeoMean(0.5, 2) = %v, %v", g, ok)
	}
	if _, ok := GeoMean([]float64{1, 0}); ok {
		t.Error("GeoMean with a zero should fail")
	}
	if _, ok := GeoMean(nil); ok {
		t.Error("GeoMean of nothing should fail")
	}
}

// Output of redis-benchmark 7.0.15 with --csv.
const benchCSV = `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","27777.78","0.935","0.104","0.239","1.079","21.039","34.687"
"GET","32258.06","0.820","0.088","0.215","0.383","21.151","35.519"
`

func TestParseCSV(t *testing.T) {
	rows, err := ParseCSV(benchCSV)
	if err != nil {
		t.Fatal(err)
	}
	want := []Row{
		{Test: "SET", RPS: 27777.78, AvgMs: 0.935, MinMs: 0.104, P50Ms: 0.239, P95Ms: 1.079, P99Ms: 21.039, MaxMs: 34.687},
		{Test: "GET", RPS: 32258.06, AvgMs: 0.820, MinMs: 0.088, P50Ms: 0.215, P95Ms: 0.383, P99Ms: 21.151, MaxMs: 35.519},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("ParseCSV = %+v\nwant %+v", rows, want)
	}

	// Columns are found by name.
	rows, err = ParseCSV("\"p99_latency_ms\",\"rps\",\"test\"\n\"1.5\",\"100\",\"GET\"\n")
	if err != nil || len(rows) != 1 || rows[0].P99Ms != 1.5 || rows[0].RPS != 100 || rows[0].Test != "GET" {
		t.Errorf("reordered columns: %+v, %v", rows, err)
	}
	if _, err := ParseCSV("\"name\",\"value\"\n"); err == nil {
		t.Error("a header without test/rps should be an error")
	}
	if rows, err := ParseCSV(""); err != nil || rows != nil {
		t.Errorf("empty output: %v, %v", rows, err)
	}
}

func TestErrorLines(t *testing.T) {
	stderr := "WARNING: Could not fetch server CONFIG\n" +
		"Error from server: ERR unknown command\n" +
		"Error from server: ERR unknown command\n" +
		"Error: Connection reset by peer\n"
	got := ErrorLines(stderr)
	want := []string{"Error from server: ERR unknown command (x2)", "Error: Connection reset by peer"}
	if !slices.Equal(got, want) {
		t.Errorf("ErrorLines = %q, want %q", got, want)
	}
	if got := ErrorLines("WARNING: Could not fetch server CONFIG\n"); len(got) != 0 {
		t.Errorf("a warning is not an error: %q", got)
	}
}

// fixture builds an input directory like run.sh writes.
type fixture struct {
	t    *testing.T
	dir  string
	seq  int
	runs []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: dir}
	f.write("meta.tsv", "date\t2026-01-01 00:00 UTC\ncommand\tbench/run.sh --test\nmode\tfull\nrounds\t3\nrequests\t1000\n"+
		"cpu_model\tTest CPU\nnproc\t2\nversion.redis-server\t7.0.15\nversion.go\tgo1.26\n")
	f.write("endpoints.tsv", "redis-tls\tok\tTLSv1.3\tTLS_AES_256_GCM_SHA384\t\ntlsproxy\tok\tTLSv1.3\tTLS_AES_128_GCM_SHA256\tupstream: tcp\n"+
		"ghostunnel\tskipped\t\t\tghostunnel not on PATH\n")
	f.write("notes.txt", "ghostunnel: skipped\n")
	return f
}

func (f *fixture) write(name, content string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// run records one redis-benchmark run with SET and GET at the given rps and
// p99; rc and stderr simulate failures.
func (f *fixture) run(phase string, round int, ep string, clients, pipeline int, setRPS, getRPS, p99 float64, rc int, stderr string) {
	f.seq++
	base := fmt.Sprintf("raw/%04d", f.seq)
	csv := `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"` + "\n"
	if setRPS > 0 {
		csv += fmt.Sprintf("\"SET\",\"%.2f\",\"0.5\",\"0.1\",\"0.4\",\"0.9\",\"%.3f\",\"5\"\n", setRPS, p99)
	}
	if getRPS > 0 {
		csv += fmt.Sprintf("\"GET\",\"%.2f\",\"0.5\",\"0.1\",\"0.4\",\"0.9\",\"%.3f\",\"5\"\n", getRPS, p99)
	}
	f.write(base+".csv", csv)
	f.write(base+".err", stderr)
	f.runs = append(f.runs, fmt.Sprintf(`{"phase":%q,"round":%d,"seq":%d,"endpoint":%q,"clients":%d,"pipeline":%d,"requests":1000,"tests":"set,get","rc":%d,"csv":%q,"stderr":%q,"wall_ms":100,"server_ticks":100,"upstream_ticks":%d,"clk_tck":100}`,
		phase, round, f.seq, ep, clients, pipeline, rc, base+".csv", base+".err", map[bool]int{true: -1, false: 20}[ep == Reference]))
}

func (f *fixture) load() *Data {
	f.t.Helper()
	f.write("runs.jsonl", strings.Join(f.runs, "\n")+"\n")
	d, err := Load(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// standard fills three rounds of all three configurations. The reference's
// rps differs per round so that the median of per-round ratios (0.9 at P=1)
// differs from the ratio of the medians (1.1).
func (f *fixture) standard() {
	refRPS := []float64{100, 200, 300}
	proxyP1 := []float64{90, 220, 240} // ratios 0.9, 1.1, 0.8
	for r := 1; r <= 3; r++ {
		ref := refRPS[r-1]
		f.run("bench", r, Reference, 50, 1, ref, ref, 2, 0, "")
		f.run("bench", r, TargetProxy, 50, 1, proxyP1[r-1], proxyP1[r-1], 2.5, 0, "")
		f.run("bench", r, Reference, 50, 16, ref*4, ref*4, 4, 0, "")
		f.run("bench", r, TargetProxy, 50, 16, ref*4*0.95, ref*4*1.05, 4, 0, "")
		f.run("bench", r, Reference, 1000, 1, ref, ref, 50, 0, "")
		f.run("bench", r, TargetProxy, 1000, 1, ref*0.85, ref*0.85, 40, 0, "")
	}
	f.run("warmup", 0, TargetProxy, 50, 16, 1, 1, 1, 0, "") // never summarized
}

func TestRatioIsMedianOfSameRoundRatios(t *testing.T) {
	f := newFixture(t)
	f.standard()
	res := Analyze(f.load())

	s, ok := res.summary(TargetProxy, Cell{Test: "SET", Clients: 50, Pipeline: 1})
	if !ok {
		t.Fatal("no summary for tlsproxy SET c=50 P=1")
	}
	if s.Rounds != 3 || !near(s.RPS, 220) {
		t.Errorf("rounds %d, median rps %v; want 3, 220", s.Rounds, s.RPS)
	}
	if s.Ratio == nil || !near(*s.Ratio, 0.9) {
		t.Errorf("ratio = %v, want median of per-round ratios 0.9 (not 220/200)", fmtOpt(s.Ratio, "%v"))
	}
	if !near(*s.RatioMin, 0.8) || !near(*s.RatioMax, 1.1) {
		t.Errorf("ratio spread = %v–%v, want 0.8–1.1", *s.RatioMin, *s.RatioMax)
	}
	if s.P99Ratio == nil || !near(*s.P99Ratio, 1.25) {
		t.Errorf("p99 ratio = %v, want 1.25", fmtOpt(s.P99Ratio, "%v"))
	}
	// 100 ticks at 100 Hz = 1 s of CPU over 1000 requests x 2 tests.
	if s.ServerCPUUs == nil || !near(*s.ServerCPUUs, 500) || !near(*s.UpstreamCPUUs, 100) || !near(*s.CPUUs, 600) {
		t.Errorf("cpu = %v + %v = %v, want 500 + 100 = 600", fmtOpt(s.ServerCPUUs, "%v"), fmtOpt(s.UpstreamCPUUs, "%v"), fmtOpt(s.CPUUs, "%v"))
	}
	ref, _ := res.summary(Reference, Cell{Test: "SET", Clients: 50, Pipeline: 1})
	if ref.Ratio == nil || !near(*ref.Ratio, 1) || ref.UpstreamCPUUs != nil {
		t.Errorf("reference: ratio %v, upstream cpu %v; want 1 and none", fmtOpt(ref.Ratio, "%v"), fmtOpt(ref.UpstreamCPUUs, "%v"))
	}
	if res.Rounds != 3 || len(res.Cells) != 6 {
		t.Errorf("rounds %d, cells %v", res.Rounds, res.Cells)
	}
	if len(res.Problems) != 0 {
		t.Errorf("unexpected problems: %q", res.Problems)
	}
}

func targetStatus(t *testing.T, res *Results, prefix, ep string) string {
	t.Helper()
	for _, tg := range res.Targets {
		if strings.HasPrefix(tg.Name, prefix) {
			return tg.Status[ep]
		}
	}
	t.Fatalf("no target starting with %q in %+v", prefix, res.Targets)
	return ""
}

func TestTargets(t *testing.T) {
	f := newFixture(t)
	f.standard()
	f.write("scale.jsonl", `{"label":"tlsproxy","conns":10000,"conns_open":10000,"rss_before_mib":10,"rss_after_mib":250,"handshakes_per_sec":900}`+"\n"+
		`{"label":"redis-tls","conns":10000,"conns_open":10000,"rss_before_mib":10,"rss_after_mib":400,"handshakes_per_sec":1000}`+"\n")
	res := Analyze(f.load())
	for prefix, want := range map[string]string{
		"rps at P=1 (50 clients)":      statusMet,    // 0.9 ≥ 0.9
		"rps at P=16":                  statusNotMet, // SET 0.95
		"p99 latency at P=1":           statusMet,    // 1.25 ≤ 1.5
		"rps at P=1 with 1000 clients": statusMet,    // 0.85 ≥ 0.8
		"RSS holding 10000":            statusMet,    // 250 MiB
	} {
		if got := targetStatus(t, res, prefix, TargetProxy); got != want {
			t.Errorf("%s: %q, want %q", prefix, got, want)
		}
	}
}

func TestTargetsFailOnErrorsAndSmallScale(t *testing.T) {
	f := newFixture(t)
	f.standard()
	f.run("bench", 3, TargetProxy, 1000, 1, 0, 0, 0, 1, "Error: Connection reset by peer\n")
	f.write("scale.jsonl", `{"label":"tlsproxy","conns":500,"conns_open":500,"rss_after_mib":30}`+"\n")
	res := Analyze(f.load())
	if got := targetStatus(t, res, "rps at P=1 with 1000 clients", TargetProxy); got != statusNotMet {
		t.Errorf("1000 clients with a failed run: %q, want %q", got, statusNotMet)
	}
	if got := targetStatus(t, res, "RSS holding", TargetProxy); got != statusNotEvaluated {
		t.Errorf("RSS with 500 connections: %q, want %q", got, statusNotEvaluated)
	}
	if len(res.Problems) == 0 || !strings.Contains(strings.Join(res.Problems, "\n"), "Connection reset by peer") {
		t.Errorf("problems should report the failed run: %q", res.Problems)
	}
}

func TestProblemsForMissingNumbers(t *testing.T) {
	f := newFixture(t)
	f.standard()
	// stunnel started but produced a single round, with GET missing.
	f.write("endpoints.tsv", "redis-tls\tok\t\t\t\ntlsproxy\tok\t\t\t\nstunnel\tok\t\t\t\n")
	f.run("bench", 1, "stunnel", 50, 1, 80, 0, 3, 0, "")
	res := Analyze(f.load())
	all := strings.Join(res.Problems, "\n")
	for _, want := range []string{"no result for GET", "stunnel: numbers for 1 of 3 rounds in SET c=50 P=1", "stunnel: numbers for 0 of 3 rounds in GET c=1000 P=1"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems lack %q:\n%s", want, all)
		}
	}
}

func TestCalibrate(t *testing.T) {
	mk := func(tcp, unix []float64) []Run {
		var runs []Run
		for i := range max(len(tcp), len(unix)) {
			if i < len(tcp) {
				runs = append(runs, Run{Phase: "calibration", Round: i + 1, Endpoint: calibrationTCP, Clients: 50, Pipeline: 1, Tests: "set",
					Rows: []Row{{Test: "SET", RPS: tcp[i]}}, ServerTicks: -1, UpstreamTicks: -1})
			}
			if i < len(unix) {
				runs = append(runs, Run{Phase: "calibration", Round: i + 1, Endpoint: calibrationUnix, Clients: 50, Pipeline: 1, Tests: "set",
					Rows: []Row{{Test: "SET", RPS: unix[i]}}, ServerTicks: -1, UpstreamTicks: -1})
			}
		}
		return runs
	}
	for _, tc := range []struct {
		name      string
		tcp, unix []float64
		want      string
		score     float64
	}{
		{"unix faster", []float64{100, 100, 100}, []float64{110, 90, 120}, "unix", 1.1},
		{"equal keeps tcp", []float64{100, 100}, []float64{100, 100}, "tcp", 1},
		{"tcp faster", []float64{100, 100, 100}, []float64{95, 99, 120}, "tcp", 0.99},
		{"only unix", nil, []float64{100}, "unix", 0},
		{"only tcp", []float64{100}, nil, "tcp", 0},
		{"none", nil, nil, "", 0},
	} {
		c := Calibrate(mk(tc.tcp, tc.unix))
		if c.Choice != tc.want || !near(c.Score, tc.score) {
			t.Errorf("%s: choice %q score %v, want %q %v", tc.name, c.Choice, c.Score, tc.want, tc.score)
		}
	}
}

func TestWriteAllProducesTableSVGAndJSON(t *testing.T) {
	f := newFixture(t)
	f.standard()
	f.run("calibration", 1, calibrationTCP, 50, 1, 100, 100, 1, 0, "")
	f.run("calibration", 1, calibrationUnix, 50, 1, 105, 105, 1, 0, "")
	f.write("scale.jsonl", `{"label":"tlsproxy","conns":10000,"conns_open":10000,"rss_before_mib":10,"rss_after_mib":250,"per_conn_kib":24,"handshakes_per_sec":900}`+"\n")
	res := Analyze(f.load())
	out := t.TempDir()
	if err := writeAll(out, res); err != nil {
		t.Fatal(err)
	}

	md, err := os.ReadFile(filepath.Join(out, "RESULTS.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| Test | Clients | Pipeline | Endpoint | rps (median) |",
		"| SET | 50 | 1 | tlsproxy | 220 | 0.90 (0.80–1.10) |",
		"| CPU | Test CPU |", "| redis-server | 7.0.15 |",
		"Produced by `bench/run.sh --test`",
		"![Throughput relative to Redis-TLS](ratios.svg)",
		"## Scale", "| tlsproxy | 10,000 | 10.0 | 250.0 | 24.0 | 900 |",
		"chose **unix**",
		"| ghostunnel | skipped |",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}

	svg, err := os.ReadFile(filepath.Join(out, "ratios.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(svg), "<svg ") || strings.Count(string(svg), "<rect") < 7 {
		t.Errorf("ratios.svg does not look like a bar chart:\n%s", svg)
	}
	dec := xml.NewDecoder(strings.NewReader(string(svg)))
	for {
		if _, err := dec.Token(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("ratios.svg is not well-formed XML: %v", err)
			}
			break
		}
	}

	var back struct {
		Summary []Summary `json:"summary"`
		Runs    []Run     `json:"runs"`
		Targets []Target  `json:"targets"`
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Summary) != 12 || len(back.Runs) != len(f.runs) || len(back.Targets) != 5 {
		t.Errorf("results.json: %d summaries, %d runs, %d targets", len(back.Summary), len(back.Runs), len(back.Targets))
	}
	if len(back.Runs[0].Rows) != 2 {
		t.Errorf("raw runs should carry their parsed rows: %+v", back.Runs[0])
	}
}

func TestSVGWithoutData(t *testing.T) {
	res := &Results{}
	svg := res.SVG()
	if !strings.Contains(svg, "no ratios to show") {
		t.Errorf("empty chart should say so:\n%s", svg)
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.6: "1,000", 123456.4: "123,456", 1234567: "1,234,567", -1500: "-1,500"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}
