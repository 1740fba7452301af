#!/usr/bin/env bash
# A fleet on one small box (issue #14): bulk import, warm start, memory per device, reconnect storms.
#   bench/scale.sh [--counts "10000 100000 1000000"] [--postgres] [--skip-storm] [--runs 3]
#                  [--shapes "8x100 16x1"] [--own-limits]
# For each count: a fresh registry, `mqgate device import` of that many devices (one token each,
# the default rules), then `mqgate serve` with the warm cache (server on CPU 0): time from spawn to
# /healthz (the cache is loaded before the listener opens), RSS, RSS of the same server over an
# empty registry, and bytes per device = (RSS - empty RSS) / count.
# Storms (load generator on CPU 1, its CPU use printed, and the server's CPU time per login, and
# PostgreSQL's when the cluster is local): 100k distinct devices authenticating once each against
# a cold cache (median of --runs, a fresh server each run), and every device of the
# largest count against the warm cache. Each in every load shape of --shapes, CONNSxDEPTH: CONNS
# keep-alive connections with up to DEPTH requests each in flight. 8x100 is how EMQX 5 calls
# (its HTTP authn `pool_size` 8, `enable_pipelining` 100); 16x1 is 16 connections that each wait
# for every answer before the next request. After each warm storm, the server's RSS: what a fleet
# that has logged in once leaves in memory. The familiar addresses a cold storm's logins queue are
# held back while the cache fills: a storm prints how many were still pending at its end
# (`familiar_pending`), how long after its end they were all written, and the CPU per login
# counting their writes (`with_them:`).
# SQLite by default; --postgres runs the same on a throwaway PostgreSQL cluster.
# --own-limits gives every device a rule and an ingestion limit of its own (the rule through the
# import, the limits by SQL: `sqlite3` or `psql`): a fill then reads a device's rows among a
# tenant's million.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTS="10000 100000 1000000" PG=0 STORM=1 RUNS=3 SHAPES="8x100 16x1" OWN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --counts) COUNTS=$2; shift 2 ;;
        --postgres) PG=1; shift ;;
        --skip-storm) STORM=0; shift ;;
        --runs) RUNS=$2; shift 2 ;;
        --shapes) SHAPES=$2; shift 2 ;;
        --own-limits) OWN=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [[ $PG == 1 && -z "${DATABASE_URL:-}" ]]; then
    extra=(); [[ $STORM == 0 ]] && extra=(--skip-storm); [[ $OWN == 1 ]] && extra+=(--own-limits)
    exec scripts/with-postgres.sh "$0" --counts "$COUNTS" --postgres --runs "$RUNS" --shapes "$SHAPES" "${extra[@]}"
fi

cargo build --release --quiet --bin mqgate --example loadgen
BIN=target/release/mqgate
EX=target/release/examples
SECRET=bench-internal-secret-0123456789abcdef
WORK=$(mktemp -d /tmp/mqgate-scale.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
SERVER_CPU=() LOAD_CPU=()
if [[ $(nproc) -ge 2 ]] && command -v taskset >/dev/null 2>&1; then
    SERVER_CPU=(taskset -c 0) LOAD_CPU=(taskset -c 1)
fi

db_url() { # a fresh registry
    if [[ $PG == 1 ]]; then
        psql -q "$DATABASE_URL" -c "CREATE DATABASE $1" >/dev/null
        echo "${DATABASE_URL%/*}/$1"
    else
        echo "sqlite://$WORK/$1.db?mode=rwc"
    fi
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
mq() { MQGATE_DATABASE_URL=$1 MQGATE_LOG=warn "$BIN" "${@:2}"; }
# serve DB PORT WARM: starts a server (broker off), waits for /healthz; sets SERVED_PID, UP_S.
serve() {
    local t0; t0=$(now)
    MQGATE_DATABASE_URL=$1 MQGATE_LISTEN=127.0.0.1:$2 MQGATE_INTERNAL_SECRET=$SECRET MQGATE_LOG=warn \
        MQGATE_MQTT_ADDR=off MQGATE_WARM_CACHE=$3 "${SERVER_CPU[@]}" "$BIN" serve >"$WORK/serve-$2.log" 2>&1 &
    SERVED_PID=$!; PIDS+=("$SERVED_PID")
    until curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1; do
        kill -0 "$SERVED_PID" 2>/dev/null || { cat "$WORK/serve-$2.log" >&2; exit 1; }
        sleep 0.02
    done
    UP_S=$(since "$t0")
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; } # user+system CPU of a process, 1/100 s
# CPU of the PostgreSQL cluster (when on this machine): its postmaster (the checkpointer's parent),
# the children it reaped and those still running; empty when the server is elsewhere.
pg_ticks() {
    local ckpt pm
    ckpt=$(psql -qAt "$DATABASE_URL" \
        -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'" 2>/dev/null) || return 0
    pm=$(awk '/^PPid:/ {print $2}' "/proc/$ckpt/status" 2>/dev/null) || return 0
    [[ -n $pm ]] || return 0
    { awk '{print $14+$15+$16+$17}' "/proc/$pm/stat"
      for p in $(pgrep -P "$pm"); do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done; } |
        awk '{s+=$1} END {print s+0}'
}
# A storm with the generator's CPU use (user+system over wall time) and the server's (and, on
# PostgreSQL, the database's) CPU time per login appended.
storm() { # port devices.tsv shape
    local out u s r s0 s1 p0 p1 n extra=""
    s0=$(ticks "$SERVED_PID"); [[ $PG == 1 ]] && p0=$(pg_ticks)
    out=$(TIMEFORMAT='%U %S %R'; { time "${LOAD_CPU[@]}" "$EX/loadgen" --secret "$SECRET" --tenant bench \
        --url "http://127.0.0.1:$1" --kind authn --devices "$2" --conns "${3%x*}" --pipeline "${3#*x}" \
        --each >"$WORK/load.out"; } 2>&1)
    read -r u s r <<<"$out"
    s1=$(ticks "$SERVED_PID"); n=$(wc -l <"$2")
    if [[ $PG == 1 && -n "${p0:-}" ]]; then
        p1=$(pg_ticks)
        extra=" postgres_us_per_login=$(( (p1 - p0) * 10000 / n ))"
    fi
    # What a storm left unwritten: audit events dropped (CONNECTs wait, at most 250 ms each, for a
    # lagging audit writer, so these should stay 0) and familiar addresses dropped past their
    # writer's pace (advisory: never waited for).
    local m dropped
    m=$(curl -sf -H "Authorization: Bearer $SECRET" "http://127.0.0.1:$1/metrics" || true)
    dropped=$(awk '/^mqgate_audit_dropped_total/ {a+=$2} /^mqgate_familiar_writes_dropped_total/ {f+=$2}
        END {printf "audit_dropped=%d familiar_dropped=%d", a, f}' <<<"$m")
    # The cache's fills (a cold storm's pace): store calls, client ids per call, time per call.
    fills=$(awk '/^mqgate_registry_fills_total / {c=$2} /^mqgate_registry_fill_client_ids_total / {i=$2}
        /^mqgate_registry_fill_seconds_total / {t=$2}
        END {if (c > 0) printf " fills=%d ids_per_fill=%.1f us_per_fill=%.0f", c, i/c, 1e6*t/c}' <<<"$m")
    # Familiar addresses held back while the cache filled (nobody waits on them: they follow the
    # storm), how long after its end they were all written, and the CPU per login with them.
    local held t0 after=""
    held=$(awk '/^mqgate_familiar_writes_pending / {print $2}' <<<"$m")
    if [[ ${held:-0} -gt 0 ]]; then
        t0=$(date +%s.%N)
        for _ in $(seq 1 1200); do
            curl -sf -H "Authorization: Bearer $SECRET" "http://127.0.0.1:$1/metrics" |
                grep -qx "mqgate_familiar_writes_pending 0" && break
            sleep 0.05
        done
        after=" familiar_pending=$held written_after=$(python3 -c "import time; print(f'{time.time()-$t0:.2f}')")s"
        after+=" with_them: server_us_per_login=$(( ($(ticks "$SERVED_PID") - s0) * 10000 / n ))"
        [[ -n $extra ]] && after+=" postgres_us_per_login=$(( ($(pg_ticks) - p0) * 10000 / n ))"
    fi
    echo "$(cat "$WORK/load.out") loadgen_cpu=$(python3 -c "print(f'{100*($u+$s)/max($r,1e-9):.0f}%')")" \
        "server_us_per_login=$(( (s1 - s0) * 10000 / n ))$extra $dropped$fills$after"
}

echo "== store: $([[ $PG == 1 ]] && echo postgres || echo sqlite)$([[ $OWN == 1 ]] && echo ", a rule and a limit per device"); server ${SERVER_CPU[*]:-unpinned}, load ${LOAD_CPU[*]:-unpinned}"
EMPTY=$(db_url empty); mq "$EMPTY" tenant add bench >/dev/null
P=$(port); serve "$EMPTY" "$P" true; sleep 1; BASE=$(rss_kb "$SERVED_PID"); stop "$SERVED_PID"
echo "empty registry: RSS $((BASE / 1024)) MiB"
printf '%-9s %-10s %-12s %-10s %-14s\n' devices import_s warm_start_s rss_mib bytes_per_device
for n in $COUNTS; do
    DB=$(db_url "reg$n"); mq "$DB" tenant add bench >/dev/null
    python3 -c "
own = $OWN == 1
with open('$WORK/import$n.csv', 'w') as f:
    f.write('client_id,username,password_hash,acl\n' if own else 'client_id\n')
    for i in range($n):
        f.write(f'dev-{i:07d},,,allow:publish:fleet/dev-{i:07d}/#\n' if own else f'dev-{i:07d}\n')"
    t0=$(now)
    mq "$DB" device import --tenant bench --tokens-out "$WORK/tokens$n.csv" "$WORK/import$n.csv" >/dev/null
    IMPORT_S=$(since "$t0")
    if [[ $OWN == 1 ]]; then # not timed: limits have no bulk import
        limits="INSERT INTO rate_limits (tenant_id, device_id, per_sec, burst, created_at)
            SELECT tenant_id, id, 50, 100, 0 FROM devices"
        # PostgreSQL plans with fresh statistics, as after `device import` (which refreshes them):
        # planned on none, the warm-up pages read the tenant's every limit (1M: 89 s, not 12).
        if [[ $PG == 1 ]]; then psql -q "$DB" -c "$limits" -c "ANALYZE rate_limits"
        else sqlite3 "$WORK/reg$n.db" "$limits"; fi
    fi
    # loadgen reads client_id<TAB>token lines.
    tail -n +2 "$WORK/tokens$n.csv" | tr ',' '\t' >"$WORK/d$n.tsv"
    P=$(port); serve "$DB" "$P" true; sleep 1
    RSS=$(rss_kb "$SERVED_PID"); stop "$SERVED_PID"
    printf '%-9s %-10s %-12s %-10s %-14s\n' "$n" "$IMPORT_S" "$UP_S" "$((RSS / 1024))" \
        "$(( (RSS - BASE) * 1024 / n ))"
    LAST=$n LASTDB=$DB
done
[[ $STORM == 1 ]] || exit 0

STORM_N=100000
if [[ ! -f "$WORK/d$STORM_N.tsv" ]]; then STORM_N=$LAST; fi
for shape in $SHAPES; do
    echo "== reconnect storm, cold cache: $STORM_N distinct devices, authn once each, $shape (connections x in flight each), $RUNS runs"
    for r in $(seq 1 "$RUNS"); do
        # a fresh server over the same registry each run: every device is a cache miss
        DB=$([[ $PG == 1 ]] && echo "${DATABASE_URL%/*}/reg$STORM_N" || echo "sqlite://$WORK/reg$STORM_N.db")
        P=$(port); serve "$DB" "$P" false
        echo "run $r: $(storm "$P" "$WORK/d$STORM_N.tsv" "$shape")"
        stop "$SERVED_PID"
    done
    echo "== reconnect storm, warm cache: $LAST devices, authn once each, $shape"
    P=$(port); serve "$LASTDB" "$P" true
    echo "warm: $(storm "$P" "$WORK/d$LAST.tsv" "$shape")"
    # What every device having logged in once leaves in memory (brute-force state, queues).
    echo "warm: RSS after the storm $(( $(rss_kb "$SERVED_PID") / 1024 )) MiB"
    stop "$SERVED_PID"
done
