//go:build pprof

package main

// Profiling builds only (go build -tags pprof): serves net/http/pprof on the
// loopback address in PPROF_ADDR, for the measurements in bench/. Release
// builds do not contain this file.

import (
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	addr := os.Getenv("PPROF_ADDR")
	if addr == "" {
		return
	}
	if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
		panic("PPROF_ADDR must be a loopback host:port")
	}
	go http.ListenAndServe(addr, nil)
}
