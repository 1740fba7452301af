#!/usr/bin/env bash
# Shows what a CRL file says and checks its signature against the CA, with openssl: what an
# operator runs before importing a CRL from elsewhere, or to see what mqgate published.
#   certs/check-crl.sh CRL.pem CA.pem
set -euo pipefail
if [[ $# -ne 2 ]]; then
    echo "usage: $0 CRL.pem CA.pem" >&2
    exit 2
fi
openssl crl -in "$1" -noout -text -CAfile "$2"
