package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Reference is the endpoint every other one is compared with.
const Reference = "redis-tls"

// Run is one redis-benchmark invocation as recorded by run.sh, plus what the
// report parsed from its output files.
type Run struct {
	Phase    string `json:"phase"` // "bench", "warmup" or "calibration"
	Round    int    `json:"round"`
	Seq      int    `json:"seq"`
	Endpoint string `json:"endpoint"`
	Clients  int    `json:"clients"`
	Pipeline int    `json:"pipeline"`
	Requests int    `json:"requests"`
	Tests    string `json:"tests"` // as passed to -t, e.g. "set,get"
	RC       int    `json:"rc"`
	CSV      string `json:"csv"`
	Stderr   string `json:"stderr"`
	WallMs   int64  `json:"wall_ms"`
	// CPU time (utime+stime, in ClkTck ticks) consumed during the run by the
	// process terminating TLS (ServerTicks) and by the plain upstream Redis
	// behind a proxy (UpstreamTicks). -1 when unknown or not applicable.
	ServerTicks   int64 `json:"server_ticks"`
	UpstreamTicks int64 `json:"upstream_ticks"`
	ClkTck        int64 `json:"clk_tck"`

	Rows   []Row    `json:"rows"`
	Errors []string `json:"errors,omitempty"`
}

// Row is one line of redis-benchmark --csv output.
type Row struct {
	Test  string  `json:"test"`
	RPS   float64 `json:"rps"`
	AvgMs float64 `json:"avg_ms"`
	MinMs float64 `json:"min_ms"`
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// Endpoint is a line of endpoints.tsv.
type Endpoint struct {
	Name     string `json:"name"`
	Status   string `json:"status"` // "ok", "failed", "skipped"
	Protocol string `json:"protocol,omitempty"`
	Cipher   string `json:"cipher,omitempty"`
	Note     string `json:"note,omitempty"`
}

// KV is an ordered meta entry.
type KV struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Scale is a line of scale.jsonl (the output of bench/scale).
type Scale struct {
	Label             string  `json:"label"`
	Conns             int     `json:"conns"`
	ConnsOpen         int     `json:"conns_open"`
	ConnErrors        int     `json:"conn_errors"`
	ConnFirstError    string  `json:"conn_first_error,omitempty"`
	OpenSeconds       float64 `json:"open_seconds"`
	RSSBeforeMiB      float64 `json:"rss_before_mib"`
	RSSAfterMiB       float64 `json:"rss_after_mib"`
	RSSClosedKiB      int64   `json:"rss_after_close_kib"`
	PerConnKiB        float64 `json:"per_conn_kib"`
	HandshakeSeconds  float64 `json:"handshake_seconds"`
	Handshakes        int64   `json:"handshakes"`
	HandshakeErrors   int64   `json:"handshake_errors"`
	HandshakeFirstErr string  `json:"handshake_first_error,omitempty"`
	HandshakesPerSec  float64 `json:"handshakes_per_sec"`
	HandshakeP50Ms    float64 `json:"handshake_p50_ms"`
	HandshakeP99Ms    float64 `json:"handshake_p99_ms"`
	CPUUsPerHandshake float64 `json:"cpu_us_per_handshake"`
	TLSVersion        string  `json:"tls_version"`
	Cipher            string  `json:"cipher"`
	Workers           int     `json:"workers"`
}

// Data is everything read from an input directory.
type Data struct {
	Meta      []KV
	Endpoints []Endpoint
	Notes     []string
	Runs      []Run
	Scale     []Scale
}

// MetaValue returns the value of key, or "".
func (d *Data) MetaValue(key string) string {
	for _, kv := range d.Meta {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// Load reads an input directory. Missing optional files are fine; a missing
// runs.jsonl is an error.
func Load(dir string) (*Data, error) {
	d := &Data{}
	var err error
	if d.Meta, err = readMeta(filepath.Join(dir, "meta.tsv")); err != nil {
		return nil, err
	}
	if d.Endpoints, err = readEndpoints(filepath.Join(dir, "endpoints.tsv")); err != nil {
		return nil, err
	}
	if d.Notes, err = readLines(filepath.Join(dir, "notes.txt")); err != nil {
		return nil, err
	}
	if d.Runs, err = readRuns(dir); err != nil {
		return nil, err
	}
	if d.Scale, err = readScale(filepath.Join(dir, "scale.jsonl")); err != nil {
		return nil, err
	}
	return d, nil
}

func readLines(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if line = strings.TrimRight(line, "\r"); strings.TrimSpace(line) != "" {
			out = append(out, line)
		}
	}
	return out, nil
}

func readMeta(path string) ([]KV, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	var out []KV
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "\t")
		out = append(out, KV{Key: k, Value: v})
	}
	return out, nil
}

func readEndpoints(path string) ([]Endpoint, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	var out []Endpoint
	for _, l := range lines {
		f := strings.Split(l, "\t")
		for len(f) < 5 {
			f = append(f, "")
		}
		out = append(out, Endpoint{Name: f[0], Status: f[1], Protocol: f[2], Cipher: f[3], Note: f[4]})
	}
	return out, nil
}

func readRuns(dir string) ([]Run, error) {
	lines, err := readLines(filepath.Join(dir, "runs.jsonl"))
	if err != nil {
		return nil, err
	}
	if lines == nil {
		return nil, fmt.Errorf("%s: no runs.jsonl", dir)
	}
	runs := make([]Run, 0, len(lines))
	for i, l := range lines {
		var r Run
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return nil, fmt.Errorf("runs.jsonl line %d: %w", i+1, err)
		}
		r.Rows, r.Errors = nil, nil
		parseRunOutput(dir, &r)
		runs = append(runs, r)
	}
	return runs, nil
}

// parseRunOutput fills r.Rows from its CSV and r.Errors from its exit status,
// stderr and missing rows.
func parseRunOutput(dir string, r *Run) {
	if r.RC != 0 {
		msg := fmt.Sprintf("redis-benchmark exit status %d", r.RC)
		if r.RC == 124 {
			msg += " (timed out)"
		}
		r.Errors = append(r.Errors, msg)
	}
	if r.CSV != "" {
		b, err := os.ReadFile(filepath.Join(dir, r.CSV))
		if err != nil {
			r.Errors = append(r.Errors, err.Error())
		} else {
			rows, err := ParseCSV(string(b))
			if err != nil {
				r.Errors = append(r.Errors, "csv: "+err.Error())
			}
			r.Rows = rows
		}
	}
	if r.Stderr != "" {
		if b, err := os.ReadFile(filepath.Join(dir, r.Stderr)); err == nil {
			r.Errors = append(r.Errors, ErrorLines(string(b))...)
		}
	}
	for _, t := range splitTests(r.Tests) {
		if _, ok := r.Row(t); !ok {
			r.Errors = append(r.Errors, "no result for "+t)
		}
	}
}

// Row returns the row for test.
func (r *Run) Row(test string) (Row, bool) {
	for _, row := range r.Rows {
		if row.Test == test {
			return row, true
		}
	}
	return Row{}, false
}

// ParseCSV parses redis-benchmark --csv output. Columns are found by their
// header names ("test","rps","avg_latency_ms",...,"p99_latency_ms",...) so
// extra or reordered columns do not matter. Rows with rps <= 0 are dropped.
func ParseCSV(s string) ([]Row, error) {
	recs, err := csv.NewReader(strings.NewReader(s)).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, nil
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[strings.TrimSpace(h)] = i
	}
	if _, ok := col["test"]; !ok {
		return nil, fmt.Errorf("no \"test\" column in header %q", recs[0])
	}
	if _, ok := col["rps"]; !ok {
		return nil, fmt.Errorf("no \"rps\" column in header %q", recs[0])
	}
	num := func(rec []string, name string) float64 {
		i, ok := col[name]
		if !ok || i >= len(rec) {
			return 0
		}
		v, _ := strconv.ParseFloat(strings.TrimSpace(rec[i]), 64)
		return v
	}
	var rows []Row
	for _, rec := range recs[1:] {
		r := Row{
			Test:  strings.TrimSpace(rec[col["test"]]),
			RPS:   num(rec, "rps"),
			AvgMs: num(rec, "avg_latency_ms"),
			MinMs: num(rec, "min_latency_ms"),
			P50Ms: num(rec, "p50_latency_ms"),
			P95Ms: num(rec, "p95_latency_ms"),
			P99Ms: num(rec, "p99_latency_ms"),
			MaxMs: num(rec, "max_latency_ms"),
		}
		if r.RPS > 0 {
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// ErrorLines returns the lines of redis-benchmark's stderr that report an
// error (it prints e.g. "Error from server: ..." or "Error: Connection reset
// by peer"). Warnings such as "WARNING: Could not fetch server CONFIG" are
// not errors. Repeated lines are reported once with a count, and at most
// maxErrorLines distinct lines are kept.
func ErrorLines(stderr string) []string {
	const maxErrorLines = 5
	var order []string
	count := map[string]int{}
	for line := range strings.SplitSeq(stderr, "\n") {
		line = strings.TrimSpace(line)
		if !strings.Contains(strings.ToLower(line), "error") {
			continue
		}
		if count[line] == 0 {
			order = append(order, line)
		}
		count[line]++
	}
	var out []string
	for i, line := range order {
		if i == maxErrorLines {
			out = append(out, fmt.Sprintf("... and %d more distinct error lines", len(order)-i))
			break
		}
		if n := count[line]; n > 1 {
			line = fmt.Sprintf("%s (x%d)", line, n)
		}
		out = append(out, line)
	}
	return out
}

func readScale(path string) ([]Scale, error) {
	lines, err := readLines(path)
	if err != nil {
		return nil, err
	}
	var out []Scale
	for i, l := range lines {
		var s Scale
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			return nil, fmt.Errorf("scale.jsonl line %d: %w", i+1, err)
		}
		out = append(out, s)
	}
	return out, nil
}
