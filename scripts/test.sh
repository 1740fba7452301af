#!/usr/bin/env bash
# The project's one test command: every test, against a real PostgreSQL (a throwaway cluster
# unless DATABASE_URL is set) and SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-postgres.sh cargo test --all-targets "$@"
