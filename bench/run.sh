#!/usr/bin/env bash
# bench/run.sh — benchmark tlsproxy against Redis's own TLS and other TLS
# proxies with redis-benchmark, then write a report. See bench/README.md.
#
#   bench/run.sh                 full run (5 rounds x 200000 requests), publishes bench/RESULTS.md
#   bench/run.sh --smoke         seconds-long check of the harness, writes bench/out/smoke/ only
#
# Exit status: 0 when every started endpoint produced numbers without errors,
# 1 otherwise (reports are still written), 2 on bad usage.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
ALL_ENDPOINTS=(redis-tls tlsproxy stunnel haproxy ghostunnel)
ORIG_ARGS=("$@")

usage() {
	cat <<'EOF'
usage: bench/run.sh [options]
  --rounds N           rounds (default 5; smoke 1)
  --requests N         requests per test per run (default 200000; smoke 2000)
  --smoke              1 round, 2000 requests, clients 50 and 100; writes bench/out/smoke/
                       and never touches bench/RESULTS.md
  --out DIR            output directory (default bench/out/<timestamp>)
  --only LIST          comma list of endpoints: redis-tls,tlsproxy,stunnel,haproxy,ghostunnel
                       (redis-tls, the reference, is always included)
  --require LIST       endpoints that must start, else exit 1 (default: redis-tls)
  --upstream MODE      how proxies reach the plain Redis: auto (measure tlsproxy with both,
                       keep the faster), tcp or unix (default auto)
  --proxy-bin PATH     use this tlsproxy binary instead of building bin/tlsproxy
  --scale-conns N      idle connections in the scale test (default 10000; smoke 500)
  --handshake-seconds S  length of the handshake-rate test (default 5; smoke 1)
  --no-scale           skip the scale test
  --no-publish         do not copy the report into bench/ after a full run
EOF
}

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- options
ROUNDS="" REQUESTS="" SMOKE=0 OUT="" ONLY="" REQUIRE="redis-tls" UPSTREAM=auto PROXY_BIN=""
SCALE_CONNS="" HS_SECONDS="" SCALE=1 PUBLISH=1
while (($#)); do
	case $1 in
	--rounds) ROUNDS=${2:?}; shift ;;
	--requests) REQUESTS=${2:?}; shift ;;
	--smoke) SMOKE=1 ;;
	--out) OUT=${2:?}; shift ;;
	--only) ONLY=${2:?}; shift ;;
	--require) REQUIRE=${2?}; shift ;;
	--upstream) UPSTREAM=${2:?}; shift ;;
	--proxy-bin) PROXY_BIN=${2:?}; shift ;;
	--scale-conns) SCALE_CONNS=${2:?}; shift ;;
	--handshake-seconds) HS_SECONDS=${2:?}; shift ;;
	--no-scale) SCALE=0 ;;
	--no-publish) PUBLISH=0 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
case $UPSTREAM in auto | tcp | unix) ;; *) echo "run.sh: --upstream must be auto, tcp or unix" >&2; exit 2 ;; esac
for v in ROUNDS REQUESTS SCALE_CONNS HS_SECONDS; do
	[[ -z ${!v} || ${!v} =~ ^[0-9]+$ ]] || { echo "run.sh: ${v,,} must be a number" >&2; exit 2; }
done

if ((SMOKE)); then
	ROUNDS=${ROUNDS:-1} REQUESTS=${REQUESTS:-2000}
	CONFIGS=("50:1" "50:16" "100:1")
	SCALE_CONNS=${SCALE_CONNS:-500} HS_SECONDS=${HS_SECONDS:-1}
	OUT=${OUT:-$BENCH_DIR/out/smoke}
	PUBLISH=0 MODE=smoke
	BENCH_TIMEOUT=60 CAL_REPS=1 CAL_REQUESTS=$REQUESTS WARMUP_REQUESTS=0
else
	ROUNDS=${ROUNDS:-5} REQUESTS=${REQUESTS:-200000}
	CONFIGS=("50:1" "50:16" "1000:1")
	SCALE_CONNS=${SCALE_CONNS:-10000} HS_SECONDS=${HS_SECONDS:-5}
	OUT=${OUT:-$BENCH_DIR/out/$(date +%Y%m%d-%H%M%S)}
	MODE=full
	BENCH_TIMEOUT=900 CAL_REPS=3 WARMUP_REQUESTS=20000
	CAL_REQUESTS=$((REQUESTS / 4 < 50000 ? REQUESTS / 4 : 50000))
	((CAL_REQUESTS >= 1000)) || CAL_REQUESTS=1000
fi
((ROUNDS >= 1 && REQUESTS >= 1)) || { echo "run.sh: --rounds and --requests must be positive" >&2; exit 2; }

# Selected endpoints, reference first.
SELECTED=(redis-tls)
if [[ -n $ONLY ]]; then
	IFS=, read -ra want <<<"$ONLY"
else
	want=("${ALL_ENDPOINTS[@]}")
fi
for e in "${want[@]}"; do
	[[ " ${ALL_ENDPOINTS[*]} " == *" $e "* ]] || { echo "run.sh: unknown endpoint '$e' (known: ${ALL_ENDPOINTS[*]})" >&2; exit 2; }
	[[ " ${SELECTED[*]} " == *" $e "* ]] || SELECTED+=("$e")
done
selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

for tool in redis-server redis-benchmark redis-cli openssl go ss timeout shuf; do
	command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

# ---------------------------------------------------------------- state, cleanup
if [[ -e $OUT ]]; then
	# Only ever clear a previous output of this script.
	if [[ -n $(ls -A "$OUT") && ! -f $OUT/meta.tsv && ! -f $OUT/runs.jsonl ]]; then
		echo "run.sh: --out $OUT exists and is not an earlier bench output; refusing to overwrite" >&2
		exit 2
	fi
	rm -rf "$OUT/raw" "$OUT/logs"
	rm -f "$OUT"/{meta.tsv,endpoints.tsv,notes.txt,runs.jsonl,scale.jsonl,results.json,RESULTS.md,ratios.svg}
fi
mkdir -p "$OUT/raw" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tlsproxy-bench.XXXXXX")
PIDS=()   # every long-running process this script started
FAILURES=0

stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 30; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- records
# meta.tsv: key<TAB>value; endpoints.tsv: name status protocol cipher note.
meta() { printf '%s\t%s\n' "$1" "$(tr '\t\n' '  ' <<<"$2" | sed 's/ *$//')" >>"$OUT/meta.tsv"; }
note() { log "note: $*"; printf '%s\n' "$*" >>"$OUT/notes.txt"; }
declare -A EP_STATUS EP_NOTE EP_PROTO EP_CIPHER EP_PORT EP_PID EP_UPPID
set_status() { EP_STATUS[$1]=$2; EP_NOTE[$1]=${3:-${EP_NOTE[$1]:-}}; }

# ---------------------------------------------------------------- ports, fds
declare -A USED_PORTS
# alloc_port VAR: a free TCP port on 127.0.0.1, below the ephemeral range.
alloc_port() {
	local p i
	for ((i = 0; i < 500; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ -z ${USED_PORTS[$p]:-} ]] || continue
		if [[ -z $(ss -Htan "sport = :$p") ]]; then
			USED_PORTS[$p]=1
			printf -v "$1" %s "$p"
			return 0
		fi
	done
	die "no free port found"
}

FD_WANT=$((SCALE_CONNS + 4096 > 20000 ? SCALE_CONNS + 4096 : 20000))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < FD_WANT)); then
	ulimit -Hn "$FD_WANT" 2>/dev/null || FD_WANT=$hard
fi
ulimit -n "$FD_WANT" || die "cannot raise the open-files limit to $FD_WANT"
FD_LIMIT=$(ulimit -n)
MAXCLIENTS=$((FD_LIMIT - 128 < 20000 ? FD_LIMIT - 128 : 20000))
max_clients=0
for cfg in "${CONFIGS[@]}"; do ((${cfg%%:*} > max_clients)) && max_clients=${cfg%%:*}; done
((MAXCLIENTS > max_clients + 64)) || die "open-files limit $FD_LIMIT is too low for $max_clients clients"
if ((SCALE && SCALE_CONNS > MAXCLIENTS - 256)); then
	note "scale test reduced from $SCALE_CONNS to $((MAXCLIENTS - 256)) connections (open-files limit $FD_LIMIT)"
	SCALE_CONNS=$((MAXCLIENTS - 256))
fi

# ---------------------------------------------------------------- build
log "output: $OUT"
PROXY_BUILT=0
if [[ -n $PROXY_BIN ]]; then
	[[ $PROXY_BIN == /* ]] || PROXY_BIN=$PWD/$PROXY_BIN
	[[ -x $PROXY_BIN ]] && PROXY_BUILT=1 || note "tlsproxy: --proxy-bin $PROXY_BIN is not executable"
elif selected tlsproxy; then
	PROXY_BIN=$ROOT/bin/tlsproxy
	log "building $PROXY_BIN"
	if (cd "$ROOT" && go build -o bin/tlsproxy ./cmd/tlsproxy) >"$OUT/logs/build-tlsproxy.log" 2>&1; then
		PROXY_BUILT=1
	else
		note "tlsproxy: build failed: $(tail -n 3 "$OUT/logs/build-tlsproxy.log" | tr '\n' ' ')"
	fi
else
	PROXY_BIN=$ROOT/bin/tlsproxy # only for certificates, if present
fi
log "building bench tools"
(cd "$ROOT" && go build -o "$TMP/report" ./bench/report && go build -o "$TMP/scale" ./bench/scale) ||
	die "cannot build bench/report or bench/scale"

# ---------------------------------------------------------------- certificates
CERTS=$TMP/certs
CA=$CERTS/ca.crt CERT=$CERTS/client.crt KEY=$CERTS/client.key
SRV_CERT=$CERTS/server.crt SRV_KEY=$CERTS/server.key
gen_certs_openssl() {
	local d=$CERTS
	mkdir -p "$d"
	openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key"
	openssl req -x509 -new -key "$d/ca.key" -subj "/CN=tlsproxy bench CA" -days 2 -out "$d/ca.crt"
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
	printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
	for n in server client; do
		openssl ecparam -name prime256v1 -genkey -noout -out "$d/$n.key"
		openssl req -new -key "$d/$n.key" -subj "/CN=$n" -out "$d/$n.csr"
		openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
			-days 2 -extfile "$d/$n.ext" -out "$d/$n.crt"
	done
} >"$OUT/logs/certs.log" 2>&1
certs_ok() { local f; for f in ca.crt server.crt server.key client.crt client.key; do [[ -s $CERTS/$f ]] || return 1; done; }
if [[ -x $PROXY_BIN ]] && "$PROXY_BIN" certs dev --out "$CERTS" >"$OUT/logs/certs.log" 2>&1 && certs_ok; then
	CERT_SOURCE="ECDSA P-256 from \`tlsproxy certs dev\`"
else
	rm -rf "$CERTS"
	gen_certs_openssl || die "cannot generate certificates with openssl (see $OUT/logs/certs.log)"
	certs_ok || die "certificate generation produced no files"
	CERT_SOURCE="ECDSA P-256 from openssl (tlsproxy certs dev was unavailable)"
	note "certificates generated with openssl because \`tlsproxy certs dev\` was unavailable"
fi
cat "$SRV_CERT" "$SRV_KEY" >"$CERTS/server.pem" # haproxy / ghostunnel bundle
chmod 600 "$CERTS"/*.key "$CERTS/server.pem"

# ---------------------------------------------------------------- helpers
tls_cli() { timeout 3 redis-cli -h 127.0.0.1 -p "$1" --tls --cacert "$CA" "${@:2}"; }

# wait_ready NAME PID PORT [plain]: until PING answers PONG. Returns 1 after
# 10 s, 2 when the process exited.
wait_ready() {
	local name=$1 pid=$2 port=$3 plain=${4:-} i out
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 2
		if [[ -n $plain ]]; then
			out=$(timeout 2 redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null || true)
		else
			out=$(tls_cli "$port" --cert "$CERT" --key "$KEY" PING 2>/dev/null || true)
		fi
		[[ $out == PONG ]] && return 0
		sleep 0.1
	done
	return 1
}

# check_endpoint NAME: after start, verify client certificates are enforced
# and record the negotiated TLS parameters.
check_endpoint() {
	local name=$1 port=${EP_PORT[$1]} out
	out=$(tls_cli "$port" PING 2>&1 || true)
	if [[ $out == *PONG* ]]; then
		set_status "$name" failed "accepted a client without a certificate"
		return 1
	fi
	out=$(timeout 5 openssl s_client -connect "127.0.0.1:$port" -CAfile "$CA" -cert "$CERT" -key "$KEY" -brief </dev/null 2>&1 || true)
	EP_PROTO[$name]=$(sed -n 's/^Protocol version: //p' <<<"$out" | head -n1)
	EP_CIPHER[$name]=$(sed -n 's/^Ciphersuite: //p' <<<"$out" | head -n1)
	return 0
}

# start NAME PORT UPSTREAM_PID CMD...: start a TLS endpoint in the background.
start() {
	local name=$1 port=$2 uppid=$3 pid
	shift 3
	"$@" >"$OUT/logs/$name.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	EP_PORT[$name]=$port EP_PID[$name]=$pid EP_UPPID[$name]=$uppid
	local why=ok
	wait_ready "$name" "$pid" "$port" || why=$?
	if [[ $why != ok ]]; then
		[[ $why == 2 ]] && why="exited during start-up" || why="did not answer PING over mTLS within 10 s"
		set_status "$name" failed "$why (logs/$name.log: $(tail -n 2 "$OUT/logs/$name.log" | tr '\n' ' ' | cut -c1-300))"
		stop_pid "$pid"
		return 1
	fi
	check_endpoint "$name" || { stop_pid "$pid"; return 1; }
	set_status "$name" ok
	log "$name ready on 127.0.0.1:$port (pid $pid, ${EP_PROTO[$name]:-?} ${EP_CIPHER[$name]:-?})"
}

# ticks PID: utime+stime of all threads, or -1.
ticks() {
	local stat rest f
	[[ $1 -gt 0 ]] 2>/dev/null && stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
	rest=${stat##*) }
	read -ra f <<<"$rest"
	echo $((f[11] + f[12]))
}
CLK_TCK=$(getconf CLK_TCK)

SEQ=0
# bench PHASE ROUND ENDPOINT CLIENTS PIPELINE REQUESTS: one redis-benchmark run.
bench() {
	local phase=$1 round=$2 name=$3 clients=$4 pipeline=$5 n=$6
	local port=${EP_PORT[$name]} spid=${EP_PID[$name]} upid=${EP_UPPID[$name]:-0}
	local base s0 u0 s1 u1 t0 t1 rc st ut summary
	SEQ=$((SEQ + 1))
	base=raw/$(printf %04d "$SEQ")-$phase-r$round-$name-c$clients-P$pipeline
	s0=$(ticks "$spid") u0=$(ticks "$upid") t0=$(date +%s%N)
	set +e
	timeout "$BENCH_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$port" --tls --cacert "$CA" --cert "$CERT" --key "$KEY" \
		-t set,get -n "$n" -c "$clients" -P "$pipeline" --csv >"$OUT/$base.csv" 2>"$OUT/$base.err"
	rc=$?
	set -e
	t1=$(date +%s%N) s1=$(ticks "$spid") u1=$(ticks "$upid")
	st=-1 ut=-1
	((s0 >= 0 && s1 >= s0)) && st=$((s1 - s0))
	((u0 >= 0 && u1 >= u0)) && ut=$((u1 - u0))
	printf '{"phase":"%s","round":%d,"seq":%d,"endpoint":"%s","clients":%d,"pipeline":%d,"requests":%d,"tests":"set,get","rc":%d,"csv":"%s","stderr":"%s","wall_ms":%d,"server_ticks":%d,"upstream_ticks":%d,"clk_tck":%d}\n' \
		"$phase" "$round" "$SEQ" "$name" "$clients" "$pipeline" "$n" "$rc" "$base.csv" "$base.err" \
		$(((t1 - t0) / 1000000)) "$st" "$ut" "$CLK_TCK" >>"$OUT/runs.jsonl"
	summary=$(awk -F, 'NR>1 {gsub(/"/,""); printf "%s %.0f rps p99 %s ms  ", $1, $2, $7}' "$OUT/$base.csv" 2>/dev/null || true)
	if ((rc != 0)) || grep -qi error "$OUT/$base.err" || ! grep -q '^"SET"' "$OUT/$base.csv" || ! grep -q '^"GET"' "$OUT/$base.csv"; then
		FAILURES=$((FAILURES + 1))
		log "FAILED $phase r$round c=$clients P=$pipeline $name: rc=$rc $(grep -i -m2 error "$OUT/$base.err" | tr '\n' ' ')"
	else
		log "$phase r$round c=$clients P=$pipeline $(printf '%-11s' "$name") $summary"
	fi
}

# ---------------------------------------------------------------- machine
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
if [[ -n ${MAKELEVEL:-} ]]; then
	meta command "make bench (bench/run.sh ${ORIG_ARGS[*]})"
else
	meta command "bench/run.sh ${ORIG_ARGS[*]}"
fi
meta mode "$MODE"
meta rounds "$ROUNDS"
meta requests "$REQUESTS"
meta configs "$(for c in "${CONFIGS[@]}"; do printf '(%s, %s) ' "${c%%:*}" "${c##*:}"; done)"
meta cpu_model "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
meta nproc "$(nproc)"
meta mem_total "$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
meta kernel "$(uname -sr)"
meta os "$( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || echo unknown)"
meta fd_limit "$FD_LIMIT (redis --maxclients $MAXCLIENTS)"
meta version.redis-server "$(redis-server --version | sed 's/^Redis server //')"
meta version.redis-benchmark "$(redis-benchmark --version)"
meta version.go "$(go version | sed 's/^go version //')"
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
((PROXY_BUILT)) && meta version.tlsproxy "$(timeout 5 "$PROXY_BIN" version 2>/dev/null | head -n1 || true) (source tree at commit $rev, $(go version "$PROXY_BIN" 2>/dev/null | sed 's/^.*: //'))"
meta version.openssl "$(openssl version)"
command -v stunnel >/dev/null && meta version.stunnel "$(stunnel -version 2>&1 | grep -m1 '^stunnel' || true)"
command -v haproxy >/dev/null && meta version.haproxy "$(haproxy -v 2>&1 | head -n1)"
command -v ghostunnel >/dev/null && meta version.ghostunnel "$(ghostunnel --version 2>&1 | head -n1)"
meta bench_cmd "redis-benchmark -h 127.0.0.1 -p PORT --tls --cacert ca.crt --cert client.crt --key client.key -t set,get -n $REQUESTS -c CLIENTS -P PIPELINE --csv"
meta cert_source "$CERT_SOURCE"
meta cpu_note "CPU time is read from /proc/PID/stat (utime+stime, all threads) before and after each run; resolution 1/$CLK_TCK s. GOMAXPROCS, haproxy nbthread and stunnel threads are left at their defaults."

# ---------------------------------------------------------------- upstream + reference
alloc_port UP_PORT
UP_SOCK=$TMP/redis.sock
redis_common=(--bind 127.0.0.1 --save '' --appendonly no --maxclients "$MAXCLIENTS" --daemonize no --protected-mode no)
redis-server "${redis_common[@]}" --port "$UP_PORT" --unixsocket "$UP_SOCK" --unixsocketperm 700 \
	>"$OUT/logs/redis-plain.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_ready redis-plain "$UP_PID" "$UP_PORT" plain || die "plain redis did not start (see $OUT/logs/redis-plain.log)"
log "plain redis (upstream) on 127.0.0.1:$UP_PORT and $UP_SOCK (pid $UP_PID)"

alloc_port P
start redis-tls "$P" 0 redis-server "${redis_common[@]}" --port 0 --tls-port "$P" \
	--tls-cert-file "$SRV_CERT" --tls-key-file "$SRV_KEY" --tls-ca-cert-file "$CA" --tls-auth-clients yes || true

# ---------------------------------------------------------------- tlsproxy (+ upstream calibration)
# proxy_config FILE PORT URL
proxy_config() {
	cat >"$1" <<EOF
listen:
  address: "127.0.0.1:$2"
  tls:
    cert_file: "$SRV_CERT"
    key_file: "$SRV_KEY"
    client_ca_file: "$CA"
    client_auth: require
upstream:
  url: "$3"
admin:
  address: ""  # two proxies may run at once: neither takes the default admin port
log:
  level: warn
EOF
}
upstream_url() { [[ $1 == unix ]] && echo "unix://$UP_SOCK" || echo "redis://127.0.0.1:$UP_PORT"; }

CHOSEN=$([[ $UPSTREAM == auto ]] && echo tcp || echo "$UPSTREAM")
UPSTREAM_HOW=$([[ $UPSTREAM == auto ]] && echo "auto: tlsproxy not measured, TCP by default" || echo "set with --upstream")
if selected tlsproxy; then
	if ((!PROXY_BUILT)); then
		set_status tlsproxy failed "no binary (build failed or --proxy-bin missing)"
	else
		variants=("$CHOSEN")
		[[ $UPSTREAM == auto ]] && variants=(tcp unix)
		started=()
		for v in "${variants[@]}"; do
			alloc_port P
			proxy_config "$TMP/tlsproxy-$v.yaml" "$P" "$(upstream_url "$v")"
			if start "tlsproxy-$v" "$P" "$UP_PID" "$PROXY_BIN" run --config "$TMP/tlsproxy-$v.yaml"; then
				started+=("$v")
			else
				note "tlsproxy with $v upstream: ${EP_NOTE[tlsproxy-$v]}"
			fi
		done
		if ((${#started[@]} == 2)); then
			log "calibrating tlsproxy upstream (tcp vs unix, $CAL_REPS rep(s) x $CAL_REQUESTS requests)"
			for ((rep = 1; rep <= CAL_REPS; rep++)); do
				for cfg in "50:1" "50:16"; do
					for v in $(shuf -e tcp unix); do
						bench calibration "$rep" "tlsproxy-$v" "${cfg%%:*}" "${cfg##*:}" "$CAL_REQUESTS"
					done
				done
			done
			if read -r CHOSEN score < <("$TMP/report" -in "$OUT" -calibrate); then
				UPSTREAM_HOW="auto: measured both, unix/tcp throughput = $score"
			else
				CHOSEN=tcp UPSTREAM_HOW="auto: calibration failed, TCP by default"
			fi
		elif ((${#started[@]} == 1)); then
			CHOSEN=${started[0]}
			[[ $UPSTREAM == auto ]] && UPSTREAM_HOW="auto: only the $CHOSEN variant started"
		fi
		if ((${#started[@]})); then
			for v in "${started[@]}"; do
				[[ $v == "$CHOSEN" ]] || stop_pid "${EP_PID[tlsproxy-$v]}"
			done
			c=tlsproxy-$CHOSEN
			EP_PORT[tlsproxy]=${EP_PORT[$c]} EP_PID[tlsproxy]=${EP_PID[$c]} EP_UPPID[tlsproxy]=$UP_PID
			EP_PROTO[tlsproxy]=${EP_PROTO[$c]} EP_CIPHER[tlsproxy]=${EP_CIPHER[$c]}
			set_status tlsproxy ok "upstream: $(upstream_url "$CHOSEN")"
			log "tlsproxy uses the $CHOSEN upstream ($UPSTREAM_HOW)"
		else
			set_status tlsproxy failed "did not start: ${EP_NOTE[tlsproxy-$CHOSEN]:-${EP_NOTE[tlsproxy-tcp]:-}}"
		fi
	fi
fi
UPSTREAM_TARGET=$([[ $CHOSEN == unix ]] && echo "$UP_SOCK" || echo "127.0.0.1:$UP_PORT")
meta upstream "$([[ $CHOSEN == unix ]] && echo "unix socket" || echo "TCP 127.0.0.1") (all proxies alike)"
meta upstream_how "$UPSTREAM_HOW"

# ---------------------------------------------------------------- other proxies
if selected stunnel; then
	if ! command -v stunnel >/dev/null; then
		set_status stunnel skipped "stunnel not on PATH"
	else
		alloc_port P
		cat >"$TMP/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 4
[redis]
accept = 127.0.0.1:$P
connect = $UPSTREAM_TARGET
cert = $SRV_CERT
key = $SRV_KEY
CAfile = $CA
requireCert = yes
verifyChain = yes
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF
		start stunnel "$P" "$UP_PID" stunnel "$TMP/stunnel.conf" || true
	fi
fi

if selected haproxy; then
	if ! command -v haproxy >/dev/null; then
		set_status haproxy skipped "haproxy not on PATH"
	else
		alloc_port P
		ha_server=$([[ $CHOSEN == unix ]] && echo "unix@$UP_SOCK" || echo "127.0.0.1:$UP_PORT")
		cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $((max_clients * 2 + 1000))
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend redis_tls
    bind 127.0.0.1:$P ssl crt $CERTS/server.pem ca-file $CA verify required
    default_backend redis_plain
backend redis_plain
    server redis $ha_server
EOF
		if haproxy -c -q -f "$TMP/haproxy.cfg" >"$OUT/logs/haproxy-check.log" 2>&1; then
			start haproxy "$P" "$UP_PID" haproxy -db -f "$TMP/haproxy.cfg" || true
		else
			set_status haproxy failed "config rejected: $(head -n 2 "$OUT/logs/haproxy-check.log" | tr '\n' ' ')"
		fi
	fi
fi

if selected ghostunnel; then
	if ! command -v ghostunnel >/dev/null; then
		set_status ghostunnel skipped "ghostunnel not on PATH"
	else
		alloc_port P
		gt_target=$([[ $CHOSEN == unix ]] && echo "unix:$UP_SOCK" || echo "127.0.0.1:$UP_PORT")
		start ghostunnel "$P" "$UP_PID" ghostunnel server --listen "127.0.0.1:$P" --target "$gt_target" \
			--keystore "$CERTS/server.pem" --cacert "$CA" --allow-all || true
	fi
fi

# ---------------------------------------------------------------- endpoint table
ACTIVE=()
for e in "${SELECTED[@]}"; do
	printf '%s\t%s\t%s\t%s\t%s\n' "$e" "${EP_STATUS[$e]:-failed}" "${EP_PROTO[$e]:-}" "${EP_CIPHER[$e]:-}" \
		"${EP_NOTE[$e]:-}" >>"$OUT/endpoints.tsv"
	if [[ ${EP_STATUS[$e]:-} == ok ]]; then
		ACTIVE+=("$e")
	else
		note "$e: ${EP_STATUS[$e]:-failed} — ${EP_NOTE[$e]:-}"
	fi
done
for e in ${REQUIRE//,/ }; do
	[[ ${EP_STATUS[$e]:-} == ok ]] || die "required endpoint $e is not available: ${EP_NOTE[$e]:-not selected}"
done
log "endpoints: ${ACTIVE[*]}"

# ---------------------------------------------------------------- scale
# Before the rounds, so the RSS baseline is close to that of a fresh process
# (only the short upstream calibration has run through tlsproxy by then).
if ((SCALE)); then
	meta scale "$SCALE_CONNS idle connections; handshakes for ${HS_SECONDS}s with 8 workers"
	for e in redis-tls tlsproxy; do
		[[ ${EP_STATUS[$e]:-} == ok ]] || continue
		log "scale: $e ($SCALE_CONNS idle connections, ${HS_SECONDS}s of handshakes)"
		if ! timeout $((HS_SECONDS + 300)) "$TMP/scale" -addr "127.0.0.1:${EP_PORT[$e]}" -ca "$CA" -cert "$CERT" -key "$KEY" \
			-conns "$SCALE_CONNS" -pid "${EP_PID[$e]}" -handshakes-duration "${HS_SECONDS}s" -workers 8 -label "$e" \
			>>"$OUT/scale.jsonl" 2>"$OUT/logs/scale-$e.log"; then
			FAILURES=$((FAILURES + 1))
			note "scale test against $e failed: $(tail -n 2 "$OUT/logs/scale-$e.log" | tr '\n' ' ')"
		fi
	done
fi

# ---------------------------------------------------------------- rounds
if ((WARMUP_REQUESTS > 0)); then
	for e in "${ACTIVE[@]}"; do bench warmup 0 "$e" 50 16 "$WARMUP_REQUESTS"; done
fi
for ((round = 1; round <= ROUNDS; round++)); do
	for cfg in "${CONFIGS[@]}"; do
		for e in $(shuf -e "${ACTIVE[@]}"); do
			bench bench "$round" "$e" "${cfg%%:*}" "${cfg##*:}" "$REQUESTS"
		done
	done
done

# ---------------------------------------------------------------- report
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
PIDS=()
rc=0
"$TMP/report" -in "$OUT" -strict || rc=$?
((rc == 0 || rc == 2)) || die "report failed"
((rc == 0)) || FAILURES=$((FAILURES + 1))
# The written analysis (what limits tlsproxy, what was tried) travels with
# every full report; it is prose kept by hand in bench/ANALYSIS.md.
if ((!SMOKE)) && [[ -f "$BENCH_DIR/ANALYSIS.md" ]]; then
	{ echo; cat "$BENCH_DIR/ANALYSIS.md"; } >>"$OUT/RESULTS.md"
fi
if ((PUBLISH)); then
	cp "$OUT/RESULTS.md" "$OUT/results.json" "$OUT/ratios.svg" "$BENCH_DIR/"
	log "published bench/RESULTS.md, bench/results.json, bench/ratios.svg"
fi
log "report: $OUT/RESULTS.md"
if ((FAILURES)); then
	log "$FAILURES failure(s); see the Problems section of $OUT/RESULTS.md"
	exit 1
fi
