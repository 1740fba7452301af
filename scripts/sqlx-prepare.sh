#!/usr/bin/env bash
# Regenerates `.sqlx/` (the offline data sqlx's `query!` macros check PostgreSQL queries against)
# without sqlx-cli: a throwaway cluster gets the migrations, then the crate is built online with
# SQLX_OFFLINE_DIR set, which makes the macros write their query files there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--inner" ]]; then
    exec scripts/with-postgres.sh "$0" --inner
fi
for f in migrations/postgres/*.sql; do
    psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -f "$f"
done
rm -rf .sqlx && mkdir -p .sqlx
touch src/registry/pg.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" cargo check --all-targets
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
