"""psycopg 3 through PgWeir in transaction mode: server-side prepared statements from the first
execution (prepare_threshold=0), many concurrent clients, results checked.

Usage: psycopg_prepared.py HOST PORT USER DBNAME CLIENTS ITERATIONS
"""
import sys
import threading

import psycopg

host, port, user, dbname, clients, iterations = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
errors = []


def worker(n: int) -> None:
    try:
        with psycopg.connect(host=host, port=port, user=user, dbname=dbname, prepare_threshold=0, autocommit=True) as conn:
            for i in range(iterations):
                row = conn.execute("SELECT %s::int * 1000 + %s::int", (n, i), prepare=True).fetchone()
                assert row[0] == n * 1000 + i, row
                row = conn.execute("SELECT v FROM kv WHERE k = %s", ((n + i) % 100 + 1,), prepare=True).fetchone()
                assert row[0] == f"v{(n + i) % 100 + 1}", row
                if i % 10 == 0:
                    with conn.transaction():
                        conn.execute("UPDATE kv SET v = v WHERE k = %s", (n + 1,), prepare=True)
                        row = conn.execute("SELECT count(*) FROM kv", prepare=True).fetchone()
                        assert row[0] == 100, row
            # psycopg actually prepared them server-side (named statements).
            assert conn.prepare_threshold == 0
    except Exception as e:  # noqa: BLE001 - report every failure
        errors.append(f"client {n}: {e!r}")


threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok {clients} clients x {iterations} iterations")
