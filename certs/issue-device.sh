#!/usr/bin/env bash
# Issues a device certificate from the tenant's mqgate CA into certs/devices/<client-id>/:
# <client-id>.crt.pem, <client-id>.key.pem (mode 0600, never overwritten) and ca.crt.pem.
# Needs MQGATE_CA_KEY_SECRET and the registry (MQGATE_DATABASE_URL or the default SQLite file);
# CERTS_DIR writes elsewhere than this directory, CERTS_MQGATE names the binary.
#   certs/issue-device.sh TENANT CLIENT_ID [VALIDITY]      e.g. certs/issue-device.sh acme cam-7 90d
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 TENANT CLIENT_ID [VALIDITY]" >&2
    exit 2
fi
here=${CERTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
mqgate=${CERTS_MQGATE:-mqgate}
exec "$mqgate" cert issue --tenant "$1" --client-id "$2" --validity "${3:-365days}" \
    --out "$here/devices/$2"
