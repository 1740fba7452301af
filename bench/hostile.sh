#!/usr/bin/env bash
# The embedded broker under hostile devices (issue #10), default bounds:
#   bench/hostile.sh [--duration SECONDS]
# (a) RSS of mqgate while one device pushes 1000 KiB retained messages to ever new topics of its
#     own subtree: the retained bound (100 messages / 1 MiB per device) refuses the rest, so RSS
#     must go flat after the first second; sampled every second (ps RSS, KiB).
# (b) PINGREQ round trip of a bystander while another device sends maximum-size SUBSCRIBEs
#     (32 refused filters of ~32 KiB, 1 MiB each) back to back: target p99 under 10 ms.
# mqgate on CPU 0, the load on CPU 1 when there are two CPUs (as bench/broker.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=20
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

cargo build --release --quiet --bin mqgate --example seed --example hostile
BIN=${CARGO_TARGET_DIR:-target}/release
EX=$BIN/examples
SECRET=bench-internal-secret-0123456789abcdef
WORK=$(mktemp -d /tmp/mqgate-hostile-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listening on $1" >&2; exit 1; }
BROKER_CPU=() LOAD_CPU=()
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null 2>&1; then
    BROKER_CPU=(taskset -c 0) LOAD_CPU=(taskset -c 1)
fi

DB="sqlite://$WORK/reg.db?mode=rwc"
"$EX/seed" "$DB" bench 3 "$WORK/devices.tsv" >/dev/null
PM=$(port); PH=$(port)
MQGATE_DATABASE_URL=$DB MQGATE_LISTEN=127.0.0.1:$PH MQGATE_MQTT_ADDR=127.0.0.1:$PM \
    MQGATE_INTERNAL_SECRET=$SECRET MQGATE_LOG=warn \
    "${BROKER_CPU[@]}" "$BIN/mqgate" serve >"$WORK/mqgate.log" 2>&1 & PIDS+=($!)
MQG=$!
wait_port "$PM"
load() { "${LOAD_CPU[@]}" "$EX/hostile" --addr "127.0.0.1:$PM" --devices "$WORK/devices.tsv" "$@"; }
rss() { ps -o rss= -p "$MQG" | tr -d ' '; }

echo "== (a) RSS under retained pushes at the device's bound (${DURATION}s)"
echo "rss_kib before: $(rss)"
load --mode retained --duration "$DURATION" & LP=$!
SAMPLES=()
for _ in $(seq 1 "$DURATION"); do sleep 1; SAMPLES+=("$(rss)"); done
wait "$LP"
echo "rss_kib per second: ${SAMPLES[*]}"
echo "rss_kib after: $(rss)"
echo "retained refusals: $(curl -s -H "Authorization: Bearer $SECRET" "http://127.0.0.1:$PH/metrics" | grep 'event="retained_exceeded"' || echo none)"

echo "== (b) bystander PINGREQ round trip under maximum-size SUBSCRIBEs (${DURATION}s)"
[[ -n "${PERF_OUT:-}" ]] && { perf record -F 999 -g -p "$MQG" -o "$PERF_OUT" -- sleep "$DURATION" >/dev/null 2>&1 & }
load --mode pings --duration "$DURATION"
grep -c panicked "$WORK/mqgate.log" && { echo "mqgate panicked" >&2; exit 1; } || true
