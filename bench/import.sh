#!/usr/bin/env bash
# Times `mqgate device import` of N devices (default 100,000; each with a generated token and one
# ACL rule of its own) into a fresh registry, then the idempotent re-run (every device "exists")
# and `device export`, on SQLite and on PostgreSQL.
#   bench/import.sh [--devices N] [--store sqlite|postgres|both] [--profile release|dev] [--listen]
#                   [--no-rules]     (devices with a token only, as `device add` makes them)
# PostgreSQL comes from DATABASE_URL, or a throwaway cluster (scripts/with-postgres.sh); a fresh
# database `mqgate_bench_import` is created in it. With --listen a `mqgate serve` runs on the same
# registry during a second import (another tenant), to show what the change announcements (one
# per new device: PostgreSQL NOTIFY, or a row of SQLite's polled change table) cost: the import's
# time with a listener, and that a device of it authenticates on that server at once.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=100000 STORE=both PROFILE=release LISTEN=0 RULE='allow:publish:fleet/${clientid}/#' 
while [[ $# -gt 0 ]]; do
    case "$1" in
        --devices) DEVICES=$2; shift 2 ;;
        --store) STORE=$2; shift 2 ;;
        --profile) PROFILE=$2; shift 2 ;;
        --listen) LISTEN=1; shift ;;
        --no-rules) RULE=; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

if [[ $STORE != sqlite && -z "${DATABASE_URL:-}" ]]; then
    exec scripts/with-postgres.sh "$0" --devices "$DEVICES" --store "$STORE" --profile "$PROFILE" \
        $([[ $LISTEN == 1 ]] && echo --listen) $([[ -z $RULE ]] && echo --no-rules)
fi

cargo build --profile "$PROFILE" --quiet --bin mqgate
DIR=${CARGO_TARGET_DIR:-target}/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
MQGATE=$PWD/$DIR/mqgate
WORK=$(mktemp -d /tmp/mqgate-import.XXXXXX)
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
export MQGATE_INTERNAL_SECRET=bench-internal-secret-0123456789abcdef MQGATE_MQTT_ADDR=off
export MQGATE_LOG=warn

# The device file: a client id and (unless --no-rules) one rule each; tokens are generated.
make_file() { # prefix
    { echo "client_id,username,password_hash,acl"
      seq -f "$1-%07.0f" 1 "$DEVICES" | sed "s|\$|,,,$RULE|"
    } >"$WORK/$1.csv"
}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc | xargs printf '%.2f'; }

# Seconds of one CLI run (its output kept in $WORK/last.out).
timed() {
    local t0; t0=$(now)
    "$MQGATE" "$@" >"$WORK/last.out" 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; exit 1; }
    since "$t0"
}

# Starts `serve` on the registry, on a spare port; sets SERVER_PID and SERVER.
start_server() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    SERVER=http://127.0.0.1:$port
    # No warm cache: SQLite's device fill reads the tenant's rules with `device_id = d.id OR
    # device_id IS NULL`, which scans every rule of the tenant for each device, so warming 100k
    # devices with a rule each is quadratic (minutes). A single device's load is not.
    MQGATE_LOG=warn MQGATE_WARM_CACHE=false "$MQGATE" serve --listen "127.0.0.1:$port" \
        >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        curl -fs -m 2 "$SERVER/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "serve did not get ready" >&2; cat "$WORK/serve.log" >&2; exit 1
}

authn() { # client-id token → allow|deny
    curl -fs -m 10 -H "Authorization: Bearer $MQGATE_INTERNAL_SECRET" -H 'content-type: application/json' \
        -d "{\"clientid\":\"$1\",\"username\":\"\",\"password\":\"$2\",\"peerhost\":\"10.0.0.1\"}" \
        "$SERVER/v1/emqx/authn" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"])'
}

bench_store() { # name url
    local name=$1
    export MQGATE_DATABASE_URL=$2
    "$MQGATE" tenant add bench >/dev/null 2>&1
    make_file bench
    local first rerun export_s
    first=$(timed device import --tenant bench "$WORK/bench.csv" --tokens-out "$WORK/$name-tokens.csv")
    rerun=$(timed device import --tenant bench "$WORK/bench.csv" --tokens-out "$WORK/$name-tokens-2.csv")
    grep -q "0 devices created, $DEVICES existed" "$WORK/last.out" || { cat "$WORK/last.out"; exit 1; }
    export_s=$(timed device export --tenant bench "$WORK/$name-export.csv")
    printf '%-10s %8d devices: import %6ss (%s devices/s), re-run %6ss, export %6ss\n' \
        "$name" "$DEVICES" "$first" "$(echo "$DEVICES / $first" | bc)" "$rerun" "$export_s"
    [[ $LISTEN == 1 ]] || return 0
    "$MQGATE" tenant add live >/dev/null 2>&1
    make_file live
    start_server
    local token last listened
    last=$(printf 'live-%07d' "$DEVICES")
    listened=$(timed device import --tenant live "$WORK/live.csv" --tokens-out "$WORK/$name-live-tokens.csv")
    token=$(grep "^$last," "$WORK/$name-live-tokens.csv" | cut -d, -f2)
    [[ $(authn "$last" "$token") == allow ]] || { echo "imported token refused" >&2; exit 1; }
    printf '%-10s   with serve listening: import %6ss (its last device authenticates on it)\n' \
        "" "$listened"
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
}

echo "mqgate device import, $PROFILE build, $(nproc) CPUs, $([[ -n $RULE ]] && echo "one rule" || echo "no rule") per device"
if [[ $STORE == sqlite || $STORE == both ]]; then
    bench_store sqlite "sqlite://$WORK/registry.db?mode=rwc"
fi
if [[ $STORE == postgres || $STORE == both ]]; then
    psql -q "$DATABASE_URL" -c 'DROP DATABASE IF EXISTS mqgate_bench_import' \
        -c 'CREATE DATABASE mqgate_bench_import' >/dev/null
    bench_store postgres "${DATABASE_URL%/*}/mqgate_bench_import"
fi
