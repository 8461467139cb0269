# tlsproxy — build, test and demo targets.
#
#   make test    install missing deps (redis-server/redis-tools, promtool from
#                prometheus, chromium for the status page test, via apt-get),
#                go vet, go test -race (tests start their own redis-server);
#                the tests then fail rather than skip when a tool is missing
#   make build   bin/tlsproxy
#   make demo    local Redis on 127.0.0.1:6379 + tlsproxy on 127.0.0.1:6380
#   make bench   bench/run.sh against a fresh build
#   make fuzz    long differential fuzz run through the proxy, then the Go
#                fuzz targets of proxy/resp

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO      ?= go
BIN     := bin/tlsproxy
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
CERTS   := certs/dev
CONFIG  ?= config.example.yaml

DEMO_REDIS_PID := /tmp/tlsproxy-demo-redis.pid
DEMO_REDIS_LOG := /tmp/tlsproxy-demo-redis.log

.PHONY: all deps build test certs demo demo-stop bench fmt vet clean

all: build

# Install what is missing (only when a binary is missing), then check Go.
deps:
	@missing=""; \
	pkgs=""; \
	for b in redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools ss:iproute2 openssl:openssl promtool:prometheus chromium:chromium; do \
	  command -v "$${b%%:*}" >/dev/null 2>&1 || { missing="$$missing $${b%%:*}"; pkgs="$$pkgs $${b##*:}"; }; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: missing:$$missing; installing$$pkgs with apt-get"; \
	  command -v apt-get >/dev/null 2>&1 || { echo "deps: apt-get not found; install redis-server, redis-tools, prometheus and chromium by hand" >&2; exit 1; }; \
	  sudo=""; \
	  if [ "$$(id -u)" != 0 ]; then \
	    if command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	    else echo "deps: not root and no sudo; install redis-server, redis-tools, prometheus and chromium by hand" >&2; exit 1; fi; \
	  fi; \
	  $$sudo apt-get update; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs; \
	fi
	@command -v $(GO) >/dev/null 2>&1 || { echo "deps: '$(GO)' not found on PATH (Go 1.26 is needed; try PATH=/usr/local/go/bin:\$$PATH)" >&2; exit 1; }
	@$(GO) version

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/tlsproxy

test: deps
	$(GO) vet ./...
	REQUIRE_TEST_TOOLS=1 $(GO) test -race -count=1 -timeout 20m ./...
	# A seconds-long run of the benchmark harness, so it cannot rot (no speed is asserted).
	bash bench/run.sh --smoke --require redis-tls,tlsproxy

# Dev-only CA, server and client certificates (never for production).
certs: build
	@if [ -f $(CERTS)/ca.crt ]; then \
	  echo "certs: $(CERTS)/ca.crt exists; keeping it (regenerate: $(BIN) certs dev --out $(CERTS) --force)"; \
	else \
	  $(BIN) certs dev --out $(CERTS); \
	fi

# Runs a throwaway Redis on 127.0.0.1:6379 (unless one answers already) and
# tlsproxy in the foreground; Ctrl-C stops tlsproxy, `make demo-stop` the Redis.
demo: deps build certs
	@answers() { out=$$(redis-cli -h 127.0.0.1 -p 6379 ping 2>&1 || true); \
	  case "$$out" in *PONG*|*NOAUTH*|*LOADING*) return 0;; *) return 1;; esac; }; \
	if answers; then \
	  echo "demo: using the Redis already answering on 127.0.0.1:6379"; \
	else \
	  echo "demo: starting redis-server on 127.0.0.1:6379 (log $(DEMO_REDIS_LOG))"; \
	  redis-server --port 6379 --bind 127.0.0.1 --save '' --daemonize yes \
	    --pidfile $(DEMO_REDIS_PID) --logfile $(DEMO_REDIS_LOG); \
	  for i in $$(seq 50); do answers && break; sleep 0.1; done; \
	  answers || { echo "demo: redis-server did not come up; see $(DEMO_REDIS_LOG)" >&2; exit 1; }; \
	fi
	@echo
	@echo "demo: tlsproxy listens on 127.0.0.1:6380. In another terminal try:"
	@echo "  redis-cli -p 6380 --tls --cacert $(CERTS)/ca.crt --cert $(CERTS)/client.crt --key $(CERTS)/client.key ping"
	@echo "demo: Ctrl-C stops tlsproxy; 'make demo-stop' stops the demo Redis."
	@echo
	exec $(BIN) run --config $(CONFIG)

# Stops the Redis that `make demo` started (if it did).
demo-stop:
	@if [ -f $(DEMO_REDIS_PID) ] && kill -0 "$$(cat $(DEMO_REDIS_PID))" 2>/dev/null; then \
	  kill "$$(cat $(DEMO_REDIS_PID))" && echo "demo-stop: stopped demo redis-server"; \
	else \
	  echo "demo-stop: no demo redis-server running"; \
	fi

bench: deps build
	bash bench/run.sh

# The differential fuzzer (proxy/difffuzz_test.go) for FUZZ_DURATION, a new
# seed per round (DIFFFUZZ_SEED=n repeats one), then the Go fuzz targets of
# the request parser and the reply scanner for FUZZTIME each.
FUZZ_DURATION ?= 5m
FUZZTIME      ?= 60s
.PHONY: fuzz
fuzz: deps
	DIFFFUZZ_DURATION=$(FUZZ_DURATION) $(GO) test -race -count=1 -timeout 30m -v -run '^TestDiffFuzzLong$$' ./proxy/
	for f in FuzzRequest FuzzScan; do \
	  $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./proxy/resp/; \
	done

fmt:
	$(GO) fmt ./...

vet:
	$(GO) vet ./...

clean:
	rm -rf bin/ bench/out/
