#!/usr/bin/env bash
# Transaction pooling with prepared statements: pgbench -M prepared against -M simple through
# PgWeir (transaction mode, pool 4), select-only at 64 clients and TPC-B-like at 16, on a
# throwaway cluster. Reports TPS and failed transactions for each.
#
#   benches/prepared.sh                 # DURATION=10 POOL=4 by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
POOL=${POOL:-4}
BIN=${PGWEIR_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
cargo build --release --locked --bin pgweir >/dev/null 2>&1
WORK=$(mktemp -d /tmp/pgweir-prep.XXXXXX); chmod 755 "$WORK"
RUN_AS=(); if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); chown postgres: "$WORK"; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(port); WEIR_PORT=$(port)
cleanup() { kill "${WEIR_PID:-0}" 2>/dev/null || true; "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
"${RUN_AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust >/dev/null
printf "listen_addresses='127.0.0.1'\nport=$PG_PORT\nunix_socket_directories='$WORK'\nfsync=off\nsynchronous_commit=off\n" >> "$WORK/data/postgresql.conf"
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
"$BIN/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1
PGWEIR_LOG=warn target/release/pgweir run --listen "127.0.0.1:$WEIR_PORT" --upstream "postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
    --pool-mode transaction --pool-size "$POOL" --auth trust & WEIR_PID=$!
sleep 1
echo "pgbench through PgWeir, transaction mode, pool $POOL, ${DURATION}s each"
printf '%-22s %-9s %12s %8s\n' workload mode tps failed
for w in "select-only -S -c 64" "tpcb-like -c 16"; do
    name=${w%% *}; args=${w#* }
    for mode in simple prepared; do
        out=$("$BIN/pgbench" -n -M "$mode" $args -j 2 -T "$DURATION" -h 127.0.0.1 -p "$WEIR_PORT" -U postgres postgres 2>&1 || true)
        printf '%-22s %-9s %12s %8s\n' "$name" "$mode" "$(echo "$out" | awk '/^tps/ {print $3}')" "$(echo "$out" | awk '/failed transactions/ {print $5}')"
    done
done
