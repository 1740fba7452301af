#!/usr/bin/env bash
# Benchmarks the EMQX endpoints against a bare hyper server in the same run.
#   bench/emqx.sh [--duration SECONDS] [--conns N] [--postgres]
# (a) cached authz path: 10k devices, EMQX-shaped bodies, N connections, mqgate vs bare server,
#     twice: unpinned, then pinned (servers on CPU 0, the load generator on CPU 1, when there are
#     two CPUs); the generator (examples/loadgen.rs: one thread, pre-rendered requests, raw
#     keep-alive sockets) prints its own CPU use beside each figure (`cpu=`, 100 % = one core) and,
#     pinned, its core's busy share (`core1_busy=`, softirq and anything else on that core
#     included): a figure whose generator is near 100 % measures the generator, not the server;
# (b) reconnect storm: authn of 100k distinct devices once each, cold cache and warmed at start.
# SQLite by default; --postgres runs the same on a throwaway PostgreSQL cluster. The embedded MQTT
# broker is off in every server here (two servers would both take its port).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=20 CONNS=16 PG=0 STORM=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --postgres) PG=1; shift ;;
        --skip-storm) STORM=0; shift ;;
        --inner) shift; break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ $PG == 1 && -z "${DATABASE_URL:-}" ]]; then
    extra=(); [[ $STORM == 0 ]] && extra=(--skip-storm)
    exec scripts/with-postgres.sh "$0" --duration "$DURATION" --conns "$CONNS" --postgres "${extra[@]}"
fi

cargo build --release --quiet --bin mqgate --example bare_server --example seed --example loadgen
BIN=target/release
EX=target/release/examples
SECRET=bench-internal-secret-0123456789abcdef
WORK=$(mktemp -d /tmp/mqgate-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

db_url() { # a fresh registry per scenario
    if [[ $PG == 1 ]]; then
        psql -q "$DATABASE_URL" -c "CREATE DATABASE $1" >/dev/null
        echo "${DATABASE_URL%/*}/$1"
    else
        echo "sqlite://$WORK/$1.db?mode=rwc"
    fi
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up_bare() { for _ in $(seq 1 600); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; sleep 0.05; done; echo "bare server on $1 did not come up" >&2; exit 1; }
wait_up() { for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 did not come up" >&2; exit 1; }
SERVER_CPU=() LOAD_CPU=()
start_mqgate() { # db port warm [device_rate tenant_rate]
    MQGATE_DATABASE_URL=$1 MQGATE_LISTEN=127.0.0.1:$2 MQGATE_INTERNAL_SECRET=$SECRET MQGATE_LOG=warn \
        MQGATE_MQTT_ADDR=off MQGATE_WARM_CACHE=$3 MQGATE_DEVICE_RATE=${4:-0} MQGATE_TENANT_RATE=${5:-0} \
        "${SERVER_CPU[@]}" "$BIN/mqgate" serve >"$WORK/mqgate-$2.log" 2>&1 &
    PIDS+=($!)
}
load() { "${LOAD_CPU[@]}" "$EX/loadgen" --secret "$SECRET" --tenant bench "$@"; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

echo "== seeding (store: $([[ $PG == 1 ]] && echo postgres || echo sqlite))"
DB10=$(db_url reg10k); DB100=$(db_url reg100k)
"$EX/seed" "$DB10" bench 10000 "$WORK/d10k.tsv"
[[ $STORM == 1 ]] && "$EX/seed" "$DB100" bench 100000 "$WORK/d100k.tsv"

ratio() { python3 -c "print(f'{float(\"$(echo "$1" | field rate)\") / float(\"$(echo "$2" | field rate)\"):.3f}')"; }
bench_a() { # label
    echo "== (a) cached authz, $CONNS connections, ${DURATION}s each, $1 (machine: $(uptime | sed 's/.*load/load/'))"
    PB=$(port); "${SERVER_CPU[@]}" "$EX/bare_server" "127.0.0.1:$PB" 2>/dev/null & PIDS+=($!)
    PM=$(port); start_mqgate "$DB10" "$PM" true
    PL=$(port); start_mqgate "$DB10" "$PL" true 1000000 1000000000
    wait_up "$PM"; wait_up "$PL"; wait_up_bare "$PB"
    authz() { load --url "http://127.0.0.1:$1" --kind authz --devices "$WORK/d10k.tsv" --conns "$CONNS" --duration "$2"; }
    for p in "$PM" "$PB" "$PL"; do authz "$p" 3 >/dev/null; done
    BARE=$(authz "$PB" "$DURATION"); MQ=$(authz "$PM" "$DURATION"); LIM=$(authz "$PL" "$DURATION")
    echo "bare            : $BARE"
    echo "mqgate          : $MQ"
    echo "mqgate+buckets  : $LIM"
    echo "ratio mqgate/bare = $(ratio "$MQ" "$BARE");  buckets cost = rate ratio (mqgate+buckets)/mqgate = $(ratio "$LIM" "$MQ");  mqgate p99 = $(echo "$MQ" | field p99_us) us  [$1]"
    kill "${PIDS[@]}" 2>/dev/null || true; PIDS=()
}
bench_a unpinned
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null 2>&1; then
    SERVER_CPU=(taskset -c 0) LOAD_CPU=(taskset -c 1)
    bench_a "pinned: servers CPU 0, generator CPU 1"
fi
[[ $STORM == 1 ]] || exit 0

echo "== (b) reconnect storm: 100k distinct devices, authn once each, $CONNS connections"
P1=$(port); start_mqgate "$DB100" "$P1" false; wait_up "$P1"
echo "cold cache : $(load --url "http://127.0.0.1:$P1" --kind authn --devices "$WORK/d100k.tsv" --conns "$CONNS" --each)"
kill "${PIDS[@]}" 2>/dev/null || true; PIDS=()
P2=$(port); T0=$(date +%s.%N); start_mqgate "$DB100" "$P2" true; wait_up "$P2"; T1=$(date +%s.%N)
echo "warm start : $(python3 -c "print(f'{$T1-$T0:.2f}')")s from spawn to healthz (100k devices loaded)"
echo "warm cache : $(load --url "http://127.0.0.1:$P2" --kind authn --devices "$WORK/d100k.tsv" --conns "$CONNS" --each)"
