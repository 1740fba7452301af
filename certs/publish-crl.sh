#!/usr/bin/env bash
# Signs a fresh CRL for every mqgate CA into certs/crl/<tenant>-<ca>.crl.pem (atomically), and
# copies them to a broker's CRL directory when one is given. `mqgate serve` re-signs on its own at
# half the CRL's validity; run this from cron (or right after `mqgate cert revoke`) when brokers
# read the files and no server with MQGATE_CA_KEY_SECRET runs.
#   certs/publish-crl.sh [BROKER_CRL_DIR]
set -euo pipefail
here=${CERTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
mqgate=${CERTS_MQGATE:-mqgate}
"$mqgate" crl publish --out "$here/crl"
if [[ $# -ge 1 ]]; then
    install -d "$1"
    for f in "$here"/crl/*.crl.pem; do
        install -m 0644 "$f" "$1/.$(basename "$f").tmp"
        mv -f "$1/.$(basename "$f").tmp" "$1/$(basename "$f")"
    done
fi
