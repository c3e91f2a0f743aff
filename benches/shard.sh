#!/usr/bin/env bash
# Shard-router overhead: pgbench -S point selects through one PgWeir process, against
#   plain    a database on one cluster (no sharding),
#   routed   the same database and pool size through the shard router (one shard: every
#            statement is parsed for its key and hashed, then runs where plain's would),
#   sharded  a database sharded by aid over two shards (two databases on the same server, each
#            holding the accounts hash partitioning gives it; a pool per shard),
# interleaved runs on a throwaway cluster this script starts itself. Reports median TPS
# (min..max), the ratios to plain, and PgWeir's CPU seconds per 1,000 transactions.
#
#   benches/shard.sh                      # defaults below
#   RUNS=5 DURATION=20 CLIENTS="16 64" benches/shard.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"16 64"}
POOL=${POOL:-20}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}

BIN=${PGWEIR_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGBENCH="$BIN/pgbench"
PSQL="$BIN/psql"

cargo build --release --locked --bin pgweir >/dev/null 2>&1
PGWEIR=$PWD/target/release/pgweir

WORK=$(mktemp -d /tmp/pgweir-shard-bench.XXXXXX)
chmod 755 "$WORK"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); chown postgres: "$WORK"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); WEIR_PORT=$(free_port)

cleanup() {
    [ -n "${WEIR_PID:-}" ] && kill "$WEIR_PID" 2>/dev/null || true
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN_AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
sql() { "$PSQL" -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -c "$2"; }
for db in plain shard0 shard1; do
    sql postgres "CREATE DATABASE $db"
    "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db" >/dev/null 2>&1
done
# Each shard keeps the accounts PARTITION BY HASH (aid) with modulus 2 gives it.
for r in 0 1; do
    sql "shard$r" "CREATE TABLE hp (k int) PARTITION BY HASH (k)"
    sql "shard$r" "DELETE FROM pgbench_accounts WHERE NOT satisfies_hash_partition('hp'::regclass, 2, $r, aid)"
    sql "shard$r" "VACUUM ANALYZE pgbench_accounts"
done
echo "accounts: plain $(sql plain 'select count(*) from pgbench_accounts'), shard0 $(sql shard0 'select count(*) from pgbench_accounts'), shard1 $(sql shard1 'select count(*) from pgbench_accounts')" >&2

cat > "$WORK/pgweir.toml" <<TOML
[proxy]
listen = "127.0.0.1:$WEIR_PORT"
auth = "trust"
[pool]
mode = "transaction"
size = $POOL
[clusters.main]
primary = "postgres://postgres@127.0.0.1:$PG_PORT/plain"
[clusters.s0]
primary = "postgres://postgres@127.0.0.1:$PG_PORT/shard0"
[clusters.s1]
primary = "postgres://postgres@127.0.0.1:$PG_PORT/shard1"
[databases.plain]
cluster = "main"
[databases.routed]
shards = ["main"]
[[databases.routed.sharded]]
table = "pgbench_accounts"
key = "aid"
type = "integer"
[databases.sharded]
shards = ["s0", "s1"]
[[databases.sharded.sharded]]
table = "pgbench_accounts"
key = "aid"
type = "integer"
TOML
PGWEIR_LOG=warn "$PGWEIR" run --config "$WORK/pgweir.toml" &
WEIR_PID=$!
for _ in $(seq 50); do sql postgres "select 1" >/dev/null 2>&1 && "$PSQL" -XAtq -h 127.0.0.1 -p "$WEIR_PORT" -U postgres -d plain -c "select 1" >/dev/null 2>&1 && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
declare -A TPS CPU
for run in $(seq "$RUNS"); do
    for c in $CLIENTS; do
        for db in plain routed sharded; do
            before=$(cpu_ticks "$WEIR_PID")
            out=$("$PGBENCH" -n -S -c "$c" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$WEIR_PORT" -U postgres "$db" 2>&1)
            tps=$(echo "$out" | awk '/^tps/ {print $3}')
            tx=$(echo "$out" | awk '/processed:/ {print $NF}' | cut -d/ -f1)
            failed=$(echo "$out" | awk '/failed transactions/ {print $5}')
            [ "${failed:-0}" = 0 ] || echo "WARNING: $db c=$c had $failed failed transactions" >&2
            after=$(cpu_ticks "$WEIR_PID")
            TPS[$db,$c]+="$tps "
            CPU[$db,$c]+="$(python3 -c "print(($after-$before)/$TICKS/$tx*1000)") "
            printf 'run %s  clients %4s  %-8s  tps %10.1f\n' "$run" "$c" "$db" "$tps" >&2
        done
    done
done

median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.1f} ({min(v):.1f}..{max(v):.1f})')" "$@"; }
med() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
echo
echo "pgbench -S through PgWeir, pool $POOL per cluster, $RUNS interleaved runs of ${DURATION}s, $THREADS pgbench threads, scale $SCALE"
printf '%-8s %-26s %-26s %-26s %-13s %-14s %-28s\n' clients plain routed sharded "routed/plain" "sharded/plain" "cpu s/1000tx plain/routed/sharded"
for c in $CLIENTS; do
    p=$(median ${TPS[plain,$c]}); r=$(median ${TPS[routed,$c]}); s=$(median ${TPS[sharded,$c]})
    rr=$(python3 -c "print(f'{$(med ${TPS[routed,$c]})/$(med ${TPS[plain,$c]}):.3f}')")
    sr=$(python3 -c "print(f'{$(med ${TPS[sharded,$c]})/$(med ${TPS[plain,$c]}):.3f}')")
    cpu=$(python3 -c "print(f'{$(med ${CPU[plain,$c]}):.4f} / {$(med ${CPU[routed,$c]}):.4f} / {$(med ${CPU[sharded,$c]}):.4f}')")
    printf '%-8s %-26s %-26s %-26s %-13s %-14s %-28s\n' "$c" "$p" "$r" "$s" "$rr" "$sr" "$cpu"
done
