#!/usr/bin/env bash
# End-to-end comparison: pgbench -S directly against PostgreSQL, through PgBouncer (transaction
# mode) and through PgWeir (transaction mode), same pool size, interleaved runs, on a throwaway
# cluster this script starts itself. Reports median TPS (with min..max), ratios against
# PgBouncer, and each proxy's CPU seconds per 1,000 transactions (with the part spent in the
# kernel, which sets a floor no proxy making the same socket calls can go under).
#
#   benches/compare.sh                       # defaults below
#   RUNS=5 DURATION=20 CLIENTS="16 64 512" POOL=20 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"16 64 512"}
POOL=${POOL:-20}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v pgbouncer >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
BIN=${PGWEIR_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGBENCH="$BIN/pgbench"

cargo build --release --locked --bin pgweir >/dev/null 2>&1
PGWEIR=$PWD/target/release/pgweir

WORK=$(mktemp -d /tmp/pgweir-bench.XXXXXX)
chmod 755 "$WORK"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); chown postgres: "$WORK"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); WEIR_PORT=$(free_port)

cleanup() {
    [ -n "${WEIR_PID:-}" ] && kill "$WEIR_PID" 2>/dev/null || true
    [ -n "${BOUNCER_PID:-}" ] && kill "$BOUNCER_PID" 2>/dev/null || true
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN_AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 700
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
"${RUN_AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

cat > "$WORK/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 2000
logfile = $WORK/pgbouncer.log
INI
echo '"postgres" ""' > "$WORK/users.txt"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"/pgbouncer.ini "$WORK"/users.txt
"${RUN_AS[@]}" pgbouncer "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
BOUNCER_PID=$!
PGWEIR_LOG=warn "$PGWEIR" run --listen "127.0.0.1:$WEIR_PORT" \
    --upstream "postgres://postgres@127.0.0.1:$PG_PORT/postgres" \
    --pool-mode transaction --pool-size "$POOL" --auth trust &
WEIR_PID=$!
sleep 1
BOUNCER_PID=$(pgrep -f "^pgbouncer $WORK/pgbouncer.ini" | head -1)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
declare -A TPS CPU SYS
for run in $(seq "$RUNS"); do
    for c in $CLIENTS; do
        for target in direct pgbouncer pgweir; do
            case $target in
                direct) port=$PG_PORT; pid="" ;;
                pgbouncer) port=$BOUNCER_PORT; pid=$BOUNCER_PID ;;
                pgweir) port=$WEIR_PORT; pid=$WEIR_PID ;;
            esac
            before=0; sys_before=0
            [ -n "$pid" ] && { before=$(cpu_ticks "$pid"); sys_before=$(sys_ticks "$pid"); }
            out=$("$PGBENCH" -n -S -c "$c" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
            tps=$(echo "$out" | awk '/^tps/ {print $3}')
            tx=$(echo "$out" | awk '/processed:/ {print $NF}' | cut -d/ -f1)
            failed=$(echo "$out" | awk '/failed transactions/ {print $5}')
            [ "${failed:-0}" = 0 ] || echo "WARNING: $target c=$c had $failed failed transactions" >&2
            TPS[$target,$c]+="$tps "
            if [ -n "$pid" ]; then
                after=$(cpu_ticks "$pid"); sys_after=$(sys_ticks "$pid")
                CPU[$target,$c]+="$(python3 -c "print(($after-$before)/$TICKS/$tx*1000)") "
                SYS[$target,$c]+="$(python3 -c "print(($sys_after-$sys_before)/$TICKS/$tx*1000)") "
            fi
            printf 'run %s  clients %4s  %-9s  tps %10.1f\n' "$run" "$c" "$target" "$tps" >&2
        done
    done
done

median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.1f} ({min(v):.1f}..{max(v):.1f})')" "$@"; }
med() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
echo
echo "pgbench -S, pool $POOL, $RUNS interleaved runs of ${DURATION}s, $THREADS pgbench threads, scale $SCALE"
printf '%-8s %-28s %-28s %-28s %-10s %-10s\n' clients direct pgbouncer pgweir "weir/bnc" "cpu ratio"
for c in $CLIENTS; do
    d=$(median ${TPS[direct,$c]}); b=$(median ${TPS[pgbouncer,$c]}); w=$(median ${TPS[pgweir,$c]})
    ratio=$(python3 -c "print(f'{$(med ${TPS[pgweir,$c]})/$(med ${TPS[pgbouncer,$c]}):.2f}')")
    cpu=$(python3 -c "b=$(med ${CPU[pgbouncer,$c]}); print(f'{$(med ${CPU[pgweir,$c]})/b:.2f}' if b else 'n/a')")
    printf '%-8s %-28s %-28s %-28s %-10s %-10s\n' "$c" "$d" "$b" "$w" "$ratio" "$cpu"
done
echo "CPU seconds per 1000 transactions (median): $(for c in $CLIENTS; do echo -n "c=$c bouncer $(med ${CPU[pgbouncer,$c]}) weir $(med ${CPU[pgweir,$c]}); "; done)"
echo "of which in the kernel (median):            $(for c in $CLIENTS; do echo -n "c=$c bouncer $(med ${SYS[pgbouncer,$c]}) weir $(med ${SYS[pgweir,$c]}); "; done)"
