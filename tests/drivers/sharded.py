"""asyncpg and psycopg 3 against a sharded database through PgWeir: keyed reads and writes
(asyncpg's Parse/Describe/Flush, then Bind; psycopg's server-side prepares), scatter
aggregates, transactions kept on one shard. Table items(id bigint, grp int, v int, ...) holds
ids 1..N with v = id * 37 % 1000.

Usage: sharded.py HOST PORT USER DBNAME N
"""
import asyncio
import sys

import asyncpg
import psycopg

host, port, user, dbname, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])


async def with_asyncpg() -> None:
    conn = await asyncpg.connect(host=host, port=port, user=user, database=dbname)
    try:
        for k in range(1, n + 1):
            assert await conn.fetchval("SELECT v FROM items WHERE id = $1", k) == k * 37 % 1000, k
        stmt = await conn.prepare("SELECT v FROM items WHERE id = $1")
        for k in range(n, 0, -7):
            assert await stmt.fetchval(k) == k * 37 % 1000, k
        assert await conn.fetchval("SELECT count(*) FROM items") == n
        assert await conn.fetchval("SELECT sum(v) FROM items") == sum(k * 37 % 1000 for k in range(1, n + 1))
        async with conn.transaction():
            await conn.execute("UPDATE items SET grp = grp + 1 WHERE id = $1", 5)
            assert await conn.fetchval("SELECT grp FROM items WHERE id = $1", 5) == 5 % 7 + 1
    finally:
        await conn.close()


def with_psycopg() -> None:
    # autocommit: psycopg otherwise opens one transaction for everything, which stays on one shard.
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, prepare_threshold=0, autocommit=True) as conn:
        for k in range(1, n + 1):
            row = conn.execute("SELECT v FROM items WHERE id = %s", (k,)).fetchone()
            assert row[0] == k * 37 % 1000, (k, row)
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == n
        top = conn.execute("SELECT id, v FROM items ORDER BY v DESC, id LIMIT 3").fetchall()
        want = sorted(range(1, n + 1), key=lambda k: (-(k * 37 % 1000), k))[:3]
        assert [r[0] for r in top] == want, (top, want)
        with conn.transaction():
            conn.execute("UPDATE items SET v = v WHERE id = %s", (7,))
            assert conn.execute("SELECT v FROM items WHERE id = %s", (7,)).fetchone()[0] == 7 * 37 % 1000


asyncio.run(with_asyncpg())
with_psycopg()
print(f"ok sharded {n}")
