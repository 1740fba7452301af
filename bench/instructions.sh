#!/usr/bin/env bash
# Instructions per cached EMQX authz request, mqgate against the bare hyper server (issue #14),
# or per EMQX authn of a cached device (--kind authn: mqgate alone, the bare server answers no
# login): each runs under valgrind's callgrind, gets a 3 s warm-up, then its counters are zeroed,
# the same load runs for --duration seconds and the count is divided by the requests answered.
#   bench/instructions.sh [--kind authz|authn] [--duration SECONDS] [--devices N]
# (BENCH_MQGATE=path measures another mqgate build, e.g. an older commit's, against the same bare.)
# A count of user-space instructions does not vary with the host's speed the way the timed ratio
# of bench/emqx.sh does (±30 % within the hour here), so it is the figure to compare two builds
# with; it leaves out the kernel's share (about 60 % of a request's time, the same for both
# servers). Under valgrind the CPU has no SHA extensions: the internal secret's SHA-256 runs in
# software (about 3,400 instructions that SHA-NI does in a few hundred cycles), on every authn
# request and on the first authz request of each connection (later ones compare the value that
# connection presented before).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=5 DEVICES=1000 KIND=authz
while [[ $# -gt 0 ]]; do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --devices) DEVICES=$2; shift 2 ;;
        --kind) KIND=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null 2>&1 || (apt-get update && apt-get install -y valgrind)

cargo build --release --quiet --bin mqgate --example bare_server --example seed --example loadgen
EX=target/release/examples
SECRET=bench-internal-secret-0123456789abcdef
WORK=$(mktemp -d /tmp/mqgate-bench.XXXXXX)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "$1" >&2; [[ -n ${2:-} ]] && grep -v "^==" "$2" | tail -5 >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 1200); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done; fail "server on $1 did not come up" "$2"; }
load() { "$EX/loadgen" --secret "$SECRET" --tenant bench --url "http://127.0.0.1:$1" --kind "$KIND" --devices "$WORK/d.tsv" --conns 16 --duration "$2"; }

"$EX/seed" "sqlite://$WORK/reg.db?mode=rwc" bench "$DEVICES" "$WORK/d.tsv" >/dev/null

measure() { # label port command...
    local label=$1 p=$2; shift 2
    MQGATE_DATABASE_URL="sqlite://$WORK/reg.db" MQGATE_LISTEN=127.0.0.1:$p MQGATE_INTERNAL_SECRET=$SECRET \
        MQGATE_LOG=warn MQGATE_MQTT_ADDR=off MQGATE_DEVICE_RATE=0 MQGATE_TENANT_RATE=0 \
        valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$label" "$@" >"$WORK/$label.log" 2>&1 &
    PID=$!
    wait_up "$p" "$WORK/$label.log"
    load "$p" 3 >/dev/null
    callgrind_control -z "$PID" >/dev/null 2>&1
    local out n ir
    out=$(load "$p" "$DURATION")
    callgrind_control -d "$PID" >/dev/null 2>&1
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    n=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out")
    # The dump after zeroing is the file with the highest part number.
    ir=$(callgrind_annotate "$(ls -v "$WORK"/cg."$label"* | tail -1)" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    echo "$label: $n requests, $((ir / n)) instructions per request"
    echo "$label $((ir / n))" >>"$WORK/ir"
}
echo "== cached $KIND under callgrind, 16 connections, ${DURATION}s, $DEVICES devices"
[[ $KIND == authz ]] && { p=$(port); measure bare "$p" "$EX/bare_server" "127.0.0.1:$p"; }
p=$(port); measure mqgate "$p" "${BENCH_MQGATE:-target/release/mqgate}" serve
[[ $KIND == authz ]] && awk '{ ir[$1] = $2 } END { printf "mqgate / bare: %.2f x the instructions\n", ir["mqgate"] / ir["bare"] }' "$WORK/ir"
exit 0
