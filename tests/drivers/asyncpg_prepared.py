"""asyncpg through PgWeir in transaction mode: its statement cache (named statements), its
Parse/Describe/Flush protocol, explicit prepare, transactions, many concurrent clients.

Usage: asyncpg_prepared.py HOST PORT USER DBNAME CLIENTS ITERATIONS
"""
import asyncio
import sys

import asyncpg

host, port, user, dbname, clients, iterations = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])


async def worker(n: int) -> None:
    conn = await asyncpg.connect(host=host, port=port, user=user, database=dbname)
    try:
        stmt = await conn.prepare("SELECT v FROM kv WHERE k = $1")
        for i in range(iterations):
            v = await conn.fetchval("SELECT $1::int * 1000 + $2::int", n, i)
            assert v == n * 1000 + i, v
            k = (n + i) % 100 + 1
            assert await stmt.fetchval(k) == f"v{k}"
            if i % 10 == 0:
                async with conn.transaction():
                    await conn.execute("UPDATE kv SET v = v WHERE k = $1", n + 1)
                    assert await conn.fetchval("SELECT count(*) FROM kv") == 100
    finally:
        await conn.close()


async def main() -> None:
    results = await asyncio.gather(*(worker(n) for n in range(clients)), return_exceptions=True)
    errors = [f"client {n}: {r!r}" for n, r in enumerate(results) if isinstance(r, BaseException)]
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"ok {clients} clients x {iterations} iterations")


asyncio.run(main())
