#!/usr/bin/env bash
# Benchmarks the embedded MQTT broker against rumqttd alone and Mosquitto 2.0, in one run.
#   bench/broker.sh [--duration SECONDS] [--conns N] [--devices N] [--rounds N] [--no-pin]
# (a) publish throughput: N connections, each subscribed to its own subtree and keeping 32 QoS 1
#     publishes in flight to it (acks/s; every acked publish must also be delivered);
# (b) CONNECT rate: N connections looping connect → CONNACK → DISCONNECT over the devices;
# (c) the same over mTLS: a full TLS 1.3 handshake with the device's own certificate each time (no
#     session resumption), no password; mqgate's TLS listener against Mosquitto's
#     (`require_certificate`, `use_identity_as_username`); rumqttd alone is built without TLS.
# Brokers: mqgate (token auth + ACL on every CONNECT/SUBSCRIBE/PUBLISH, SQLite registry, warmed),
# rumqttd 0.20 alone (its own listener, no auth, same router settings), Mosquitto 2.0 with a
# password file and an ACL file (`pattern readwrite bench/%u/#`), each on a spare port.
# Run it when nothing else is building: load generator and brokers share the machine. On two or
# more CPUs each broker (all its threads) is pinned to CPU 0 and the load generator to CPU 1
# (`taskset`): every broker gets exactly one core, and the scheduler's placement no longer moves
# the figures by ±10 % between rounds. `--no-pin` lets them share all CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10 CONNS=16 DEVICES=1000 ROUNDS=5 PIN=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --devices) DEVICES=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --no-pin) PIN=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] \
    || (apt-get update && apt-get install -y mosquitto)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
MOSQUITTO_PASSWD=$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)

cargo build --release --quiet --bin mqgate --example seed --example mqttload --example rumqttd_plain
BIN=${CARGO_TARGET_DIR:-target}/release
EX=$BIN/examples
SECRET=bench-internal-secret-0123456789abcdef
WORK=$(mktemp -d /tmp/mqgate-broker-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listening on $1" >&2; exit 1; }
BROKER_CPU=() LOAD_CPU=()
if [[ $PIN == 1 && $(nproc) -ge 2 ]] && command -v taskset >/dev/null 2>&1; then
    BROKER_CPU=(taskset -c 0) LOAD_CPU=(taskset -c 1)
    echo "pinned: brokers on CPU 0, load generator on CPU 1"
fi
load() { "${LOAD_CPU[@]}" "$EX/mqttload" --devices "$WORK/devices.tsv" --tenant bench --conns "$CONNS" "$@"; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
ratio() { python3 -c "print(f'{float(\"$(echo "$1" | field rate)\") / float(\"$(echo "$2" | field rate)\"):.3f}')"; }

echo "== seeding $DEVICES devices (SQLite)"
DB="sqlite://$WORK/reg.db?mode=rwc"
CA_SECRET=bench-ca-key-secret-0123456789abcdef
MQGATE_CA_KEY_SECRET=$CA_SECRET "$EX/seed" "$DB" bench "$DEVICES" "$WORK/devices.tsv" "$WORK/certs"

echo "== starting brokers"
PM=$(port); PH=$(port); PMT=$(port)
MQGATE_DATABASE_URL=$DB MQGATE_LISTEN=127.0.0.1:$PH MQGATE_MQTT_ADDR=127.0.0.1:$PM \
    MQGATE_MQTTS_ADDR=127.0.0.1:$PMT MQGATE_MQTTS_CERT_FILE=$WORK/certs/server.pem \
    MQGATE_MQTTS_KEY_FILE=$WORK/certs/server.key MQGATE_CA_KEY_SECRET=$CA_SECRET \
    MQGATE_INTERNAL_SECRET=$SECRET MQGATE_LOG=warn \
    "${BROKER_CPU[@]}" "$BIN/mqgate" serve >"$WORK/mqgate.log" 2>&1 & PIDS+=($!)
PR=$(port); "${BROKER_CPU[@]}" "$EX/rumqttd_plain" "127.0.0.1:$PR" >"$WORK/rumqttd.log" 2>&1 & PIDS+=($!)
PQ=$(port); PQT=$(port)
tr '\t' ':' <"$WORK/devices.tsv" >"$WORK/passwd"
"$MOSQUITTO_PASSWD" -U "$WORK/passwd"
echo 'pattern readwrite bench/%u/#' >"$WORK/acl"
COMMON="user root
allow_anonymous false
password_file $WORK/passwd
acl_file $WORK/acl
persistence false
log_dest none
max_connections -1"
cat >"$WORK/mosquitto.conf" <<CONF
$COMMON
listener $PQ 127.0.0.1
CONF
# The TLS listener in a second Mosquitto with TCP_NODELAY: with Debian's default (Nagle on) each
# handshake stalls ~40 ms on delayed ACKs (363/s); plain MQTT is faster with the default (Nagle
# batches its publishes: 121k vs 79k acks/s), so each phase gets Mosquitto's better setting.
cat >"$WORK/mosquitto-tls.conf" <<CONF
$COMMON
set_tcp_nodelay true
listener $PQT 127.0.0.1
cafile $WORK/certs/ca.pem
certfile $WORK/certs/server.pem
keyfile $WORK/certs/server.key
require_certificate true
use_identity_as_username true
CONF
"${BROKER_CPU[@]}" "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 & PIDS+=($!)
"${BROKER_CPU[@]}" "$MOSQUITTO" -c "$WORK/mosquitto-tls.conf" >"$WORK/mosquitto-tls.log" 2>&1 & PIDS+=($!)
wait_port "$PM"; wait_port "$PR"; wait_port "$PQ"; wait_port "$PMT"; wait_port "$PQT"
echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"

# Each measurement runs ROUNDS times, brokers interleaved, and the median round is reported, so
# a burst of background load hurts all three alike instead of whichever ran at the time.
median() { python3 -c 'import sys,statistics; v=[l for l in sys.stdin.read().splitlines() if l]; r=sorted(v, key=lambda l: float(l.split("rate=")[1].split()[0])); print(r[len(r)//2])'; }
measure() { # mode duration -> sets RUM MQG MOS (median lines)
    local mode=$1 dur=$2 r
    : >"$WORK/rum" ; : >"$WORK/mqg" ; : >"$WORK/mos"
    for r in $(seq 1 "$ROUNDS"); do
        load --addr "127.0.0.1:$PR" --mode "$mode" --duration "$dur" >>"$WORK/rum"
        load --addr "127.0.0.1:$PM" --mode "$mode" --duration "$dur" >>"$WORK/mqg"
        load --addr "127.0.0.1:$PQ" --mode "$mode" --duration "$dur" >>"$WORK/mos"
    done
    RUM=$(median <"$WORK/rum"); MQG=$(median <"$WORK/mqg"); MOS=$(median <"$WORK/mos")
    echo "rounds (rate):  rumqttd $(field rate <"$WORK/rum" | tr '\n' ' ')| mqgate $(field rate <"$WORK/mqg" | tr '\n' ' ')| mosquitto $(field rate <"$WORK/mos" | tr '\n' ' ')"
    echo "rumqttd alone   : $RUM"
    echo "mqgate          : $MQG"
    echo "mosquitto       : $MOS"
    echo "ratio mqgate/rumqttd = $(ratio "$MQG" "$RUM");  mqgate/mosquitto = $(ratio "$MQG" "$MOS")"
}

echo "== (a) publish throughput: $CONNS connections, QoS 1, window 32, 64-byte payload, ${DURATION}s x $ROUNDS rounds"
for p in "$PR" "$PM" "$PQ"; do load --addr "127.0.0.1:$p" --mode publish --duration 2 >/dev/null; done
measure publish "$DURATION"

CDUR=$(( DURATION < 5 ? DURATION : 5 ))
echo "== (b) CONNECT rate: $CONNS connections looping connect/CONNACK/DISCONNECT, ${CDUR}s x $ROUNDS rounds"
measure connect "$CDUR"

echo "== (c) CONNECT rate over mTLS: $CONNS connections, full handshake with the device certificate, ${CDUR}s x $ROUNDS rounds"
: >"$WORK/mqgt"; : >"$WORK/most"
for r in $(seq 1 "$ROUNDS"); do
    load --addr "127.0.0.1:$PMT" --mode connect --tls "$WORK/certs" --duration "$CDUR" >>"$WORK/mqgt"
    load --addr "127.0.0.1:$PQT" --mode connect --tls "$WORK/certs" --duration "$CDUR" >>"$WORK/most"
done
MQGT=$(median <"$WORK/mqgt"); MOST=$(median <"$WORK/most")
echo "rounds (rate):  mqgate $(field rate <"$WORK/mqgt" | tr '\n' ' ')| mosquitto $(field rate <"$WORK/most" | tr '\n' ' ')"
echo "mqgate (mTLS)   : $MQGT"
echo "mosquitto (TLS) : $MOST"
echo "ratio mqgate/mosquitto = $(ratio "$MQGT" "$MOST")"
