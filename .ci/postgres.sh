# Start and stop a throwaway PostgreSQL cluster on loopback (sourced by .ci/run; usable by
# hand: `source .ci/postgres.sh; start_postgres`). Exports FILTERDB_TEST_POSTGRES_URL.

start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    PG_DIR=$(mktemp -d /tmp/filterdb-pg.XXXXXX)
    chmod a+rx "$PG_DIR"
    chown postgres "$PG_DIR"
    PG_PORT=${PG_PORT:-$((20000 + RANDOM % 20000))}
    # initdb and pg_ctl refuse to run as root (PLATFORM.md).
    local as_postgres=()
    [ "$(id -u)" = 0 ] && as_postgres=(runuser -u postgres --)
    "${as_postgres[@]}" "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null
    "${as_postgres[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null
    PG_STOP=("${as_postgres[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -m fast stop)
    export FILTERDB_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "PostgreSQL running at $FILTERDB_TEST_POSTGRES_URL"
}

stop_postgres() {
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}
