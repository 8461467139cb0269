// Command report turns the raw records written by bench/run.sh into
// results.json, RESULTS.md and ratios.svg.
//
// Input directory layout (all written by run.sh):
//
//	meta.tsv       key<TAB>value lines: machine, versions, command, settings
//	endpoints.tsv  name<TAB>status<TAB>protocol<TAB>cipher<TAB>note
//	notes.txt      free-text notes, one per line
//	runs.jsonl     one JSON object per redis-benchmark run (see Run)
//	raw/*.csv      redis-benchmark --csv output of each run
//	raw/*.err      its stderr
//	scale.jsonl    one JSON line per bench/scale run
//
// With -calibrate it only prints the faster proxy upstream transport
// ("unix" or "tcp") and the unix/tcp score, for run.sh to act on.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	in := flag.String("in", "", "directory written by bench/run.sh")
	out := flag.String("out", "", "where to write results.json, RESULTS.md, ratios.svg (default: -in)")
	calibrate := flag.Bool("calibrate", false, "print the faster tlsproxy upstream (unix|tcp) and its score, then exit")
	strict := flag.Bool("strict", false, "exit 2 when a run had errors or a started endpoint produced no numbers")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "report: -in is required")
		os.Exit(1)
	}
	if *out == "" {
		*out = *in
	}

	data, err := Load(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}

	if *calibrate {
		c := Calibrate(data.Runs)
		if c.Choice == "" {
			fmt.Fprintln(os.Stderr, "report: no calibration data")
			os.Exit(1)
		}
		fmt.Printf("%s %.4f\n", c.Choice, c.Score)
		return
	}

	res := Analyze(data)
	if err := writeAll(*out, res); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	for _, p := range res.Problems {
		fmt.Fprintln(os.Stderr, "report: problem:", p)
	}
	if *strict && len(res.Problems) > 0 {
		os.Exit(2)
	}
}

func writeAll(dir string, res *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := res.JSON()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"results.json": js,
		"RESULTS.md":   []byte(res.Markdown()),
		"ratios.svg":   []byte(res.SVG()),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
