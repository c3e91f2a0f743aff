#!/usr/bin/env bash
# Result-cache benchmark (issue 5, acceptance 1): a read that takes about 50 ms (a real
# aggregate over a throwaway table) run by `pgbench -c 32 -T 10` through PgWeir three ways, on
# a cluster and a redis-server this script starts itself:
#   nocache   the same proxy with no cache rule (every query reaches PostgreSQL)
#   l1        a cache rule, in-process L1 in front of Redis
#   redis     a cache rule, L1 off (l1_max_bytes = 0): every hit is a Redis round trip
# Reports TPS for each and the ratios against nocache.
#
#   benches/cache.sh
#   RUNS=3 DURATION=10 CLIENTS=32 ROWS=200000 benches/cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-32}
ROWS=${ROWS:-200000}
POOL=${POOL:-20}

BIN=${PGWEIR_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGBENCH="$BIN/pgbench"
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

PGWEIR=${PGWEIR:-}
if [ -z "$PGWEIR" ]; then
    cargo build --release --locked --bin pgweir >/dev/null 2>&1
    PGWEIR=$PWD/target/release/pgweir
fi

WORK=$(mktemp -d /tmp/pgweir-cache-bench.XXXXXX)
chmod 755 "$WORK"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); chown postgres: "$WORK"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); REDIS_PORT=$(free_port); WEIR_PORT=$(free_port)

cleanup() {
    [ -n "${WEIR_PID:-}" ] && kill "$WEIR_PID" 2>/dev/null || true
    [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN_AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_parallel_workers_per_gather = 0
fsync = off
CONF
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
REDIS_PID=$!

PSQL=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE TABLE sales AS SELECT g AS id, g % 1000 AS region, (g::bigint * 7919) % 10000 AS amount FROM generate_series(1, $ROWS) g" -c "VACUUM ANALYZE sales"
QUERY="SELECT region % 10 AS bucket, count(*), sum(amount), round(avg(amount), 2) FROM sales GROUP BY 1 ORDER BY 1"
echo "$QUERY;" > "$WORK/query.sql"
ms=$("${PSQL[@]}" -At -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $QUERY" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["Execution Time"],1))')
echo "query: $QUERY"
echo "one execution directly: ${ms} ms ($ROWS rows)"

start_weir() {
    cat > "$WORK/weir.toml" <<TOML
[proxy]
auth = "trust"
[pool]
mode = "transaction"
size = $POOL
$1
TOML
    PGWEIR_LOG=warn "$PGWEIR" run -c "$WORK/weir.toml" --listen "127.0.0.1:$WEIR_PORT" \
        --upstream "postgres://postgres@127.0.0.1:$PG_PORT/postgres" &
    WEIR_PID=$!
    for _ in $(seq 100); do "${PSQL[@]}" -p "$WEIR_PORT" -c "select 1" >/dev/null 2>&1 && return; sleep 0.1; done
    echo "pgweir did not start" >&2; exit 1
}
stop_weir() { kill "$WEIR_PID"; wait "$WEIR_PID" 2>/dev/null || true; WEIR_PID=; }

RULE='[[cache.rules]]
name = "sales"
tables = ["sales"]
ttl = "5m"'
declare -A TPS
for run in $(seq "$RUNS"); do
    for mode in nocache l1 redis; do
        case $mode in
            nocache) start_weir "" ;;
            l1) start_weir "[cache]
redis_url = \"redis://127.0.0.1:$REDIS_PORT\"
$RULE" ;;
            redis) start_weir "[cache]
redis_url = \"redis://127.0.0.1:$REDIS_PORT\"
l1_max_bytes = 0
$RULE" ;;
        esac
        out=$("$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$WORK/query.sql" -h 127.0.0.1 -p "$WEIR_PORT" -U postgres postgres 2>&1)
        tps=$(echo "$out" | awk '/^tps/ {print $3}')
        failed=$(echo "$out" | awk '/failed transactions/ {print $5}')
        [ "${failed:-0}" = 0 ] || echo "WARNING: $mode had $failed failed transactions" >&2
        TPS[$mode]+="$tps "
        printf 'run %s  %-8s tps %10.1f\n' "$run" "$mode" "$tps" >&2
        stop_weir
        redis-cli -p "$REDIS_PORT" flushall >/dev/null 2>&1 || true
    done
done
med() { python3 -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.1f}')" "$@"; }
n=$(med ${TPS[nocache]}); l=$(med ${TPS[l1]}); r=$(med ${TPS[redis]})
echo
echo "pgbench -n -c $CLIENTS -j 2 -T $DURATION, pool $POOL, $RUNS run(s), median TPS"
printf '%-10s %12s %10s\n' mode tps "x nocache"
printf '%-10s %12s %10s\n' nocache "$n" 1.0
printf '%-10s %12s %10s\n' l1 "$l" "$(python3 -c "print(f'{$l/$n:.0f}')")"
printf '%-10s %12s %10s\n' redis "$r" "$(python3 -c "print(f'{$r/$n:.0f}')")"
