#!/usr/bin/env bash
# A/B comparison of tlsproxy builds against Redis's own TLS, interleaved in
# rounds on one machine; the quick companion of run.sh for trying a change.
#
#   bench/ab.sh [-P N] [-c N] [-n N] [-r N] BINARY|WRAPPER ...
#
# Each argument is a tlsproxy binary, or a script that execs one (to compare
# environment settings such as GOMAXPROCS or GOGC). Every proxy runs in front
# of one plain Redis on a unix socket. Prints each run, then per endpoint the
# median rps, the median ratio to Redis-TLS in the same round, and the median
# p99. Ports are picked from 127.0.0.1's free ports; nothing is asserted.
set -euo pipefail

P=1 C=50 N=150000 R=5
while getopts "P:c:n:r:" o; do
	case $o in
	P) P=$OPTARG ;; c) C=$OPTARG ;; n) N=$OPTARG ;; r) R=$OPTARG ;;
	*) sed -n '2,12p' "$0"; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
(($# > 0)) || { sed -n '2,12p' "$0"; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d /tmp/tlsproxy-ab.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

go run "$ROOT/cmd/tlsproxy" certs dev --out "$TMP/certs" >/dev/null
D=$TMP/certs
TLS=(--tls --cacert "$D/ca.crt" --cert "$D/client.crt" --key "$D/client.key")

redis-server --port 0 --unixsocket "$TMP/redis.sock" --save '' --appendonly no --logfile "$TMP/redis.log" &
PIDS+=($!)
ref=$(free_port)
redis-server --port 0 --tls-port "$ref" --bind 127.0.0.1 --save '' --appendonly no --logfile "$TMP/redis-tls.log" \
	--tls-cert-file "$D/server.crt" --tls-key-file "$D/server.key" --tls-ca-cert-file "$D/ca.crt" --tls-auth-clients yes &
PIDS+=($!)
names=(redis-tls) ports=("$ref")
i=0
for bin in "$@"; do
	i=$((i + 1))
	port=$(free_port)
	cat >"$TMP/proxy$i.yaml" <<EOF
listen:
  address: 127.0.0.1:$port
  tls: {cert_file: $D/server.crt, key_file: $D/server.key, client_ca_file: $D/ca.crt}
upstream:
  url: unix://$TMP/redis.sock
log: {level: warn}
EOF
	# No admin endpoint: several proxies run at once (older builds ignore the variable).
	TLSPROXY_ADMIN_ADDRESS= "$bin" run --config "$TMP/proxy$i.yaml" >"$TMP/proxy$i.log" 2>&1 &
	PIDS+=($!)
	names+=("$i:$(basename "$bin")") ports+=("$port")
done
for p in "${ports[@]}"; do wait_port "$p" || { echo "ab: nothing listens on $p" >&2; exit 1; }; done

: >"$TMP/runs"
for r in $(seq "$R"); do
	for k in $(shuf -e "${!ports[@]}"); do
		# redis-benchmark spins forever when it cannot connect: always bound it.
		timeout 300 redis-benchmark -p "${ports[$k]}" "${TLS[@]}" -t set,get -n "$N" -c "$C" -P "$P" --csv |
			awk -F, -v r="$r" -v e="${names[$k]}" 'NR > 1 { gsub(/"/, ""); print r, e, $1, $2, $7 }' | tee -a "$TMP/runs"
	done
done

echo
echo "median over $R rounds (c=$C, P=$P, n=$N): rps, ratio to redis-tls in the same round, p99 ms"
awk '
	{ rps[$1, $2, $3] = $4; p99[$2, $3] = p99[$2, $3] " " $5; ends[$2] = 1; tests[$3] = 1; rounds[$1] = 1 }
	function median(s,   a, n, i, j, x) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j > 0 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		for (e in ends) for (t in tests) {
			v = ""; q = ""
			for (r in rounds) { v = v " " rps[r, e, t]; q = q " " rps[r, e, t] / rps[r, "redis-tls", t] }
			printf "%-24s %s %10.0f %5.2f %7.3f\n", e, t, median(v), median(q), median(p99[e, t])
		}
	}' "$TMP/runs" | sort
