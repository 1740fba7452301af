#!/usr/bin/env bash
# The project's one test command: every test, against a real PostgreSQL (a throwaway cluster
# unless DATABASE_URL is set) and SQLite. Examples and benches are built by clippy in CI; here only
# targets with tests run. Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# The embedded broker's tests drive Debian's mosquitto_pub / mosquitto_sub.
command -v mosquitto_pub >/dev/null 2>&1 || (apt-get update && apt-get install -y mosquitto-clients)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
scripts/with-postgres.sh cargo test --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
