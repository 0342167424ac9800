#!/usr/bin/env bash
# A throwaway PostgreSQL on 127.0.0.1 for the tests (Debian's `postgresql`, installed when missing).
#   bash scripts/postgres.sh start   install if needed, init a cluster under target/postgres, start, wait
#   bash scripts/postgres.sh stop    stop it and remove its data
#   bash scripts/postgres.sh status
# Environment: PG_PORT (default 15432). Prints the connection URL on success, e.g.
# postgres://akwatch@127.0.0.1:15432/akwatch
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PG_PORT:-15432}"
root="$(pwd)/target/postgres"
data="$root/data"
log="$root/server.log"
url="postgres://akwatch@127.0.0.1:$port/akwatch"

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
    done
    return 1
}

install() {
    if bindir >/dev/null 2>&1; then return; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "PostgreSQL is not installed and apt-get is not available: install Debian's postgresql" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q postgresql >/dev/null
    }
    # The package starts a cluster of its own on 5432: not ours, stop it.
    (service postgresql stop || true) >/dev/null 2>&1
}

# PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    install
    local bin
    bin="$(bindir)"
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "$url"
        return
    fi
    rm -rf "$root"
    mkdir -p "$root"
    if [ "$(id -u)" = 0 ]; then chown postgres "$root"; fi
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$root/initdb.log" 2>&1 || {
        cat "$root/initdb.log" >&2
        exit 1
    }
    as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$root -c fsync=off -c max_connections=200" \
        start >/dev/null || {
        cat "$log" >&2
        exit 1
    }
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE ROLE akwatch LOGIN CREATEDB" >/dev/null
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE DATABASE akwatch OWNER akwatch" >/dev/null
    echo "$url"
}

stop() {
    local bin
    bin="$(bindir)" || return 0
    if [ -d "$data" ]; then
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$root"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        bin="$(bindir)"
        as_pg "$bin/pg_ctl" -D "$data" status
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
