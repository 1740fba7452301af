#!/usr/bin/env bash
# Runs a command with DATABASE_URL pointing at a PostgreSQL server. When DATABASE_URL is already
# set it is used as is; otherwise a throwaway cluster is created in a temporary directory (trust
# auth, loopback only, a spare port), started for the command, and removed afterwards.
set -euo pipefail

if [[ -n "${DATABASE_URL:-}" ]]; then
    exec "$@"
fi

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [[ -x "$d/initdb" && -x "$d/postgres" ]] && { echo "$d"; return; }
    fi
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/postgres" ]] && { echo "$d"; return; }
    done
    return 1
}

if ! BIN=$(find_bindir); then
    cat >&2 <<'MSG'
No PostgreSQL server binaries (initdb, postgres) were found.
Install them, e.g. on Debian/Ubuntu:  apt-get install -y postgresql
or point the tests at an existing server:  DATABASE_URL=postgres://user@host:5432/postgres scripts/test.sh
MSG
    exit 1
fi

DIR=$(mktemp -d /tmp/mqgate-pg.XXXXXX)
RUN=()
if [[ $(id -u) -eq 0 ]]; then
    # initdb refuses to run as root: run the cluster as the postgres user.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$DIR"
    RUN=(runuser -u postgres --)
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cleanup() {
    "${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

"${RUN[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --no-sync >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log" >&2; exit 1; }
"${RUN[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }

export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
echo "with-postgres: throwaway cluster on port $PORT" >&2
set +e
"$@"
status=$?
set -e
exit $status
