#!/usr/bin/env bash
# PgWeir's test command (the README's, and what CI runs): installs what the tests need when it
# is missing (PostgreSQL server and client, Redis), then checks formatting and lints and runs
# every test. The tests start their own PostgreSQL clusters and Redis on free ports; they never
# touch the machine's own services.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to install: $*" >&2; exit 1; fi
}

have_pg_server() {
    [ -n "${PGWEIR_PG_BIN:-}" ] && [ -x "$PGWEIR_PG_BIN/initdb" ] && return 0
    command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
have_pg_server || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python drivers for the driver tests (psycopg 3, asyncpg), from PyPI into a venv.
VENV=target/test-venv
if ! "$VENV/bin/python" -c "import psycopg, asyncpg, yaml" 2>/dev/null; then
    python3 -m venv "$VENV" 2>/dev/null || {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    }
    "$VENV/bin/pip" install -q --disable-pip-version-check "psycopg[binary]>=3.1" "asyncpg>=0.29" "PyYAML>=6"
fi
export PGWEIR_PYTHON="$PWD/$VENV/bin/python"

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast
else
    # One test at a time: a few tests read this process's memory, which other tests running
    # in the same process would disturb (nextest runs each test in its own process).
    cargo test --locked --no-fail-fast -- --test-threads=1
fi
