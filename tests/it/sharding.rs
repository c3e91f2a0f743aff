//! Sharding and federation against real PostgreSQL: the hash function agrees with PostgreSQL's
//! own `satisfies_hash_partition()`, rows inserted through the proxy land on the shard hash
//! partitioning assigns, point statements reach one shard, and federated tables stay on their
//! cluster.

use futures_util::SinkExt;
use pgweir::shard::hash::partition;
use pgweir::shard::KeyValue;

use crate::harness::pg::{PgCluster, PgOptions};

/// Deterministic spread of 64-bit values (splitmix64).
fn values(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect()
}

/// For each value (as text) of `sql_type`, the remainder PostgreSQL assigns under `modulus`.
async fn remainders(db: &tokio_postgres::Client, sql_type: &str, texts: &[String], modulus: u64) -> Vec<i32> {
    let parent = format!("hp_{}", sql_type.replace(' ', "_"));
    db.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {parent} (k {sql_type}) PARTITION BY HASH (k)"))
        .await
        .unwrap();
    let sql = format!(
        "SELECT (SELECT r FROM generate_series(0, {m} - 1) r \
                 WHERE satisfies_hash_partition('{parent}'::regclass, {m}, r, v.k)) \
         FROM (SELECT k::{sql_type} AS k, o FROM unnest($1::text[]) WITH ORDINALITY AS u(k, o)) v ORDER BY o",
        m = modulus
    );
    let rows = db.query(&sql, &[&texts]).await.unwrap();
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

#[tokio::test]
async fn hash_matches_postgres_partitioning_for_every_key_type() {
    let pg = PgCluster::start(PgOptions::default());
    let db = pg.connect("postgres", "postgres").await;
    const N: usize = 5000;
    let raw = values(N, 7);
    let mut cases: Vec<(&str, Vec<String>, Vec<KeyValue>)> = Vec::new();
    let ints = |f: fn(u64) -> i64| -> (Vec<String>, Vec<KeyValue>) {
        let mut v: Vec<i64> = raw.iter().map(|&x| f(x)).collect();
        v.extend([0, 1, -1]);
        (v.iter().map(i64::to_string).collect(), v.into_iter().map(KeyValue::Int).collect())
    };
    let (t, k) = ints(|x| x as i64);
    cases.push(("bigint", t, k));
    let (t, k) = ints(|x| x as i32 as i64);
    cases.push(("integer", t, k));
    let (t, k) = ints(|x| x as i16 as i64);
    cases.push(("smallint", t, k));
    // Text of every length 0..=40 (tails of all sizes), ASCII and multibyte UTF-8.
    let alphabet: Vec<char> = "abcXYZ019 _-é漢字🙂".chars().collect();
    let texts: Vec<String> = raw
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let len = i % 41;
            (0..len).map(|j| alphabet[((x >> (j % 16)) as usize + j) % alphabet.len()]).collect()
        })
        .collect();
    let keys = texts.iter().map(|s| KeyValue::Text(s.as_bytes().to_vec())).collect();
    cases.push(("text", texts.clone(), keys));
    cases.push(("varchar", texts.clone(), texts.iter().map(|s| KeyValue::Text(s.as_bytes().to_vec())).collect()));
    let uuids: Vec<[u8; 16]> = raw
        .chunks(1)
        .zip(values(N, 11))
        .map(|(a, b)| {
            let mut u = [0u8; 16];
            u[..8].copy_from_slice(&a[0].to_be_bytes());
            u[8..].copy_from_slice(&b.to_be_bytes());
            u
        })
        .collect();
    let utext = uuids
        .iter()
        .map(|u| {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        })
        .collect();
    cases.push(("uuid", utext, uuids.into_iter().map(KeyValue::Uuid).collect()));

    for (ty, texts, keys) in &cases {
        assert!(texts.len() >= N);
        for m in [2u64, 3, 8] {
            let theirs = remainders(&db, ty, texts, m).await;
            let mismatches: Vec<String> = keys
                .iter()
                .zip(&theirs)
                .zip(texts)
                .filter(|((k, &r), _)| partition(Some(k), m) != r as u64)
                .map(|((k, r), t)| format!("{t:?} → ours {} theirs {r}", partition(Some(k), m)))
                .take(5)
                .collect();
            assert!(mismatches.is_empty(), "{ty} modulus {m}: {mismatches:?}");
            // Every remainder is used: the comparison is not vacuous.
            for r in 0..m as i32 {
                assert!(theirs.contains(&r), "{ty} modulus {m}: remainder {r} never assigned");
            }
        }
    }
}

const SHARDS: [&str; 2] = ["shard0", "shard1"];

/// A cluster with databases `shard0`, `shard1` (the shards) and `whole` (every row, for
/// comparison), each with table `items`; pg_stat_statements counts statements per database.
async fn shard_cluster() -> PgCluster {
    let pg = PgCluster::start(PgOptions {
        extra_conf: vec!["shared_preload_libraries = 'pg_stat_statements'".into()],
        ..PgOptions::default()
    });
    let admin = pg.connect("postgres", "postgres").await;
    for db in SHARDS.iter().chain(&["whole"]) {
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
        let c = pg.connect("postgres", db).await;
        c.batch_execute(
            "CREATE EXTENSION pg_stat_statements;
             CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, v int, amount numeric(10,2), name text);
             CREATE TABLE hp (id bigint) PARTITION BY HASH (id);",
        )
        .await
        .unwrap();
    }
    pg
}

fn shard_toml(pg: &PgCluster) -> String {
    format!(
        "[proxy]\nauth = \"trust\"\n[pool]\nmode = \"transaction\"\n\
         [clusters.s0]\nprimary = \"postgres://127.0.0.1:{p}/shard0\"\n\
         [clusters.s1]\nprimary = \"postgres://127.0.0.1:{p}/shard1\"\n\
         [databases.app]\nshards = [\"s0\", \"s1\"]\n\
         [[databases.app.sharded]]\ntable = \"items\"\nkey = \"id\"\ntype = \"bigint\"\n",
        p = pg.port()
    )
}

fn shard_of(id: i64) -> usize {
    partition(Some(&KeyValue::Int(id)), 2) as usize
}

/// Rows whose shard PostgreSQL's hash partitioning (modulus 2) would not put them on.
async fn misplaced(pg: &PgCluster) -> (Vec<i64>, i64) {
    let mut wrong = Vec::new();
    let mut total = 0;
    for (r, db) in SHARDS.iter().enumerate() {
        let c = pg.connect("postgres", db).await;
        let sql = format!("SELECT id FROM items WHERE NOT satisfies_hash_partition('hp'::regclass, 2, {r}, id)");
        wrong.extend(c.query(&sql, &[]).await.unwrap().iter().map(|row| row.get::<_, i64>(0)));
        total += c.query_one("SELECT count(*) FROM items", &[]).await.unwrap().get::<_, i64>(0);
    }
    (wrong, total)
}

fn row_sql(id: i64) -> String {
    format!("({id}, {}, {}, {}.{:02}, 'n{:05}')", id % 7, (id * 37) % 1000, id % 500, id % 100, (id * 7919) % 10007)
}

#[tokio::test]
async fn inserts_land_where_hash_partitioning_puts_them_and_point_reads_hit_one_shard() {
    let pg = shard_cluster().await;
    let proxy = crate::support::start_proxy(&pg, &shard_toml(&pg)).await;
    let c = crate::support::connect(proxy.local_addr(), "postgres", None, "app").await;
    // Single-row inserts, simple and extended protocol.
    for id in 1..=1000i64 {
        c.batch_execute(&format!("INSERT INTO items (id, grp, v, amount, name) VALUES {}", row_sql(id))).await.unwrap();
    }
    let ins = c.prepare("INSERT INTO items (id, grp, v, name) VALUES ($1, $2, $3, $4)").await.unwrap();
    for id in 1001..=3000i64 {
        let name = format!("p{id}");
        c.execute(&ins, &[&id, &((id % 7) as i32), &((id * 37 % 1000) as i32), &name]).await.unwrap();
    }
    // Multi-row inserts, cut per shard; the count covers every row.
    for batch in 0..50i64 {
        let rows: Vec<String> = (0..100).map(|i| row_sql(3001 + batch * 100 + i)).collect();
        let n =
            c.execute(&format!("INSERT INTO items (id, grp, v, amount, name) VALUES {}", rows.join(", ")), &[]).await;
        assert_eq!(n.unwrap(), 100);
    }
    // COPY, text and CSV, in chunks that cut rows anywhere.
    let text: String = (8001..=9000i64).map(|id| format!("{id}\t{}\t\\N\tt\\t{id}\n", id % 7)).collect();
    let csv: String = (9001..=10000i64).map(|id| format!("\"c,{id}\n\",{id},{}\n", id % 7)).collect();
    for (sql, data) in [
        ("COPY items (id, grp, v, name) FROM STDIN", text),
        ("COPY items (name, id, grp) FROM STDIN WITH (FORMAT csv)", csv),
    ] {
        let sink = c.copy_in(sql).await.unwrap();
        futures_util::pin_mut!(sink);
        for chunk in data.as_bytes().chunks(777) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(sink.finish().await.unwrap(), 1000, "{sql}");
    }
    let (wrong, total) = misplaced(&pg).await;
    assert_eq!(total, 10_000);
    assert!(wrong.is_empty(), "rows on the wrong shard: {:?}", &wrong[..wrong.len().min(10)]);
    for (id, name) in [(8001i64, "t\t8001"), (9001, "c,9001\n")] {
        let direct = pg.connect("postgres", SHARDS[shard_of(id)]).await;
        let got: String = direct.query_one("SELECT name FROM items WHERE id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(got, name);
    }

    // Point reads by key reach only their shard.
    let stat = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query LIKE 'SELECT v FROM items WHERE id = $1%' AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let directs = [pg.connect("postgres", "shard0").await, pg.connect("postgres", "shard1").await];
    let sel = c.prepare("SELECT v FROM items WHERE id = $1").await.unwrap();
    let keys: Vec<i64> = (1..=400).filter(|&k| shard_of(k) == 1).take(150).collect();
    let before: Vec<i64> =
        [directs[0].query_one(stat, &[]).await.unwrap().get(0), directs[1].query_one(stat, &[]).await.unwrap().get(0)]
            .to_vec();
    for k in &keys {
        let row = c.query_one(&sel, &[k]).await.unwrap();
        assert_eq!(row.get::<_, Option<i32>>(0), Some(((k * 37) % 1000) as i32));
    }
    let after: Vec<i64> =
        [directs[0].query_one(stat, &[]).await.unwrap().get(0), directs[1].query_one(stat, &[]).await.unwrap().get(0)]
            .to_vec();
    assert_eq!(after[1] - before[1], keys.len() as i64, "shard1 ran every point read");
    assert_eq!(after[0] - before[0], 0, "shard0 ran none of them");
}

/// Every result row as text (None for NULL), by the simple protocol.
async fn text_rows(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = c.simple_query(sql).await.map_err(|e| crate::support::message(&e))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

#[tokio::test]
async fn scatter_reads_merge_to_what_one_database_answers() {
    let pg = shard_cluster().await;
    let proxy = crate::support::start_proxy(&pg, &shard_toml(&pg)).await;
    let c = crate::support::connect(proxy.local_addr(), "postgres", None, "app").await;
    let whole = pg.connect("postgres", "whole").await;
    // Rows with NULLs, duplicates across groups, mixed-case and multibyte names.
    for batch in 0..20i64 {
        let rows: Vec<String> = (1..=100)
            .map(|i| {
                let id = batch * 100 + i;
                let v = if id % 13 == 0 { "NULL".to_string() } else { ((id * 37) % 1000).to_string() };
                let name = ["alpha", "Beta", "gamma", "émile", "Zed", "beta"][(id % 6) as usize];
                format!("({id}, {}, {v}, {}.{:02}, '{name}{}')", id % 7, id % 500, id % 100, id % 11)
            })
            .collect();
        let sql = format!("INSERT INTO items (id, grp, v, amount, name) VALUES {}", rows.join(", "));
        c.batch_execute(&sql).await.unwrap();
        whole.batch_execute(&sql).await.unwrap();
    }
    let queries = [
        "SELECT id, v, name FROM items ORDER BY id LIMIT 10",
        "SELECT id, name FROM items ORDER BY name DESC, id LIMIT 10 OFFSET 5",
        "SELECT * FROM items ORDER BY v DESC NULLS LAST, id LIMIT 7",
        "SELECT count(*) FROM items",
        "SELECT count(v), sum(v), avg(v), min(v), max(v) FROM items",
        "SELECT avg(amount), sum(amount), min(name), max(name) FROM items WHERE grp > 2",
        "SELECT grp, count(*), sum(v), avg(v), min(name), max(v) FROM items GROUP BY grp ORDER BY grp",
        "SELECT name, count(*) AS n FROM items GROUP BY name ORDER BY n DESC, name LIMIT 5",
        "SELECT avg(v) FROM items WHERE id < 0",
        "SELECT id, v FROM items WHERE id IN (3, 4, 5, 1000, 1999) ORDER BY id",
    ];
    for q in queries {
        let ours = text_rows(&c, q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let theirs = text_rows(&whole, q).await.unwrap();
        assert!(!theirs.is_empty(), "{q}: the comparison needs rows");
        assert_eq!(ours, theirs, "{q}");
    }
    // A plain scatter returns every row once (order is the shards').
    let mut ours = text_rows(&c, "SELECT id FROM items WHERE v > 500").await.unwrap();
    let mut theirs = text_rows(&whole, "SELECT id FROM items WHERE v > 500").await.unwrap();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert_eq!(text_rows(&c, "SELECT id FROM items LIMIT 3 OFFSET 2").await.unwrap().len(), 3);
    // The extended protocol (binary results) merges the same way.
    let row = c.query_one("SELECT count(*), sum(v), max(name) FROM items WHERE grp = $1", &[&3i32]).await.unwrap();
    let want = whole.query_one("SELECT count(*), sum(v), max(name) FROM items WHERE grp = $1", &[&3i32]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), want.get::<_, i64>(0));
    assert_eq!(row.get::<_, i64>(1), want.get::<_, i64>(1));
    assert_eq!(row.get::<_, String>(2), want.get::<_, String>(2));
    let ids = |rows: Vec<tokio_postgres::Row>| -> Vec<i64> { rows.iter().map(|r| r.get(0)).collect() };
    let q = "SELECT id FROM items WHERE name LIKE $1 ORDER BY id DESC LIMIT 4";
    assert_eq!(ids(c.query(q, &[&"Zed%"]).await.unwrap()), ids(whole.query(q, &[&"Zed%"]).await.unwrap()));
    // What cannot be merged says so, and the session goes on.
    let e = c.simple_query("SELECT DISTINCT grp FROM items").await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&e), "0A000");
    assert!(crate::support::message(&e).contains("SELECT DISTINCT cannot be merged across shards"), "{e}");
    assert_eq!(crate::support::scalar(&c, "SELECT count(*) FROM items").await.unwrap(), "2000");
}

#[tokio::test]
async fn keyless_writes_and_cross_shard_transactions_are_refused() {
    let pg = shard_cluster().await;
    let proxy = crate::support::start_proxy(&pg, &shard_toml(&pg)).await;
    let c = crate::support::connect(proxy.local_addr(), "postgres", None, "app").await;
    let a = 1i64;
    let b = (2..100).find(|&k| shard_of(k) != shard_of(a)).unwrap();
    for sql in ["UPDATE items SET v = 1", "DELETE FROM items WHERE v = 3"] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(crate::support::sqlstate(&e), "0A000", "{sql}");
        assert!(crate::support::message(&e).contains("no shard key"), "{sql}: {e}");
    }
    // A transaction stays on the shard of its first statement.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO items (id, grp) VALUES ({a}, 1)")).await.unwrap();
    let e = c.batch_execute(&format!("INSERT INTO items (id, grp) VALUES ({b}, 1)")).await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&e), "0A000");
    assert!(crate::support::message(&e).contains("cannot span shards"), "{e}");
    c.batch_execute(&format!("UPDATE items SET v = 9 WHERE id = {a}")).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let direct = pg.connect("postgres", SHARDS[shard_of(a)]).await;
    assert_eq!(crate::support::scalar(&direct, &format!("SELECT v FROM items WHERE id = {a}")).await.unwrap(), "9");
    // A multi-row insert over both shards inside a transaction would need two-phase commit.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.batch_execute(&format!("INSERT INTO items (id, grp) VALUES ({}, 1), ({}, 1)", a + 1000, b + 1000)).await;
    let e = e.unwrap_err();
    assert!(crate::support::message(&e).contains("two shards"), "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // The session key and hints route keyless statements.
    c.batch_execute(&format!("SET pgweir.shard_key = '{b}'")).await.unwrap();
    let on = crate::support::scalar(&c, "SELECT current_database()").await.unwrap();
    assert_eq!(on, SHARDS[0], "statements without tables go to the default shard");
    c.batch_execute(&format!("INSERT INTO items (id, grp) VALUES ({b}, 2)")).await.unwrap();
    c.batch_execute("UPDATE items SET v = 7").await.unwrap();
    c.batch_execute("RESET pgweir.shard_key").await.unwrap();
    let n = crate::support::scalar(
        &c,
        &format!("/* pgweir: shard={} */ SELECT count(*) FROM items WHERE v = 7", shard_of(b)),
    )
    .await
    .unwrap();
    assert_eq!(n, "1");
    let e = c.batch_execute("/* pgweir: shard=5 */ SELECT 1").await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&e), "22023");
    // A COPY with a bad key commits nothing anywhere.
    let before = misplaced(&pg).await.1;
    let sink = c.copy_in::<_, bytes::Bytes>("COPY items (id, grp) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(format!("{}\t1\n{}\t1\nnot-a-key\t1\n", a + 5000, b + 5000))).await.unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&e), "22P02", "{e}");
    assert!(crate::support::message(&e).contains("invalid input syntax for type bigint"), "{e}");
    assert_eq!(misplaced(&pg).await.1, before);
    assert_eq!(crate::support::scalar(&c, "SELECT count(*) FROM items").await.unwrap(), before.to_string());
}

#[tokio::test]
async fn federation_sends_each_table_to_its_cluster() {
    let pg = PgCluster::start(PgOptions::default());
    let admin = pg.connect("postgres", "postgres").await;
    for (db, ddl) in [
        ("fed_main", "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ann'), (2, 'bo');"),
        (
            "fed_billing",
            "CREATE SCHEMA audit; CREATE TABLE audit.log (id int); CREATE TABLE invoices (id int, user_id int, total int);
             INSERT INTO invoices VALUES (10, 1, 100), (11, 2, 250); INSERT INTO audit.log VALUES (1);",
        ),
    ] {
        admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
        pg.connect("postgres", db).await.batch_execute(ddl).await.unwrap();
    }
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[pool]\nmode = \"transaction\"\n\
         [clusters.main]\nprimary = \"postgres://127.0.0.1:{p}/fed_main\"\n\
         [clusters.billing]\nprimary = \"postgres://127.0.0.1:{p}/fed_billing\"\n\
         [databases.app]\ncluster = \"main\"\n\
         [databases.app.federation]\ninvoices = \"billing\"\n\"audit.*\" = \"billing\"\n",
        p = pg.port()
    );
    let proxy = crate::support::start_proxy(&pg, &toml).await;
    let c = crate::support::connect(proxy.local_addr(), "postgres", None, "app").await;
    let one = |sql: &'static str| {
        let c = &c;
        async move { crate::support::scalar(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) }
    };
    assert_eq!(one("SELECT current_database() || ':' || count(*) FROM users").await, "fed_main:2");
    assert_eq!(one("SELECT current_database() || ':' || sum(total) FROM invoices").await, "fed_billing:350");
    assert_eq!(one("SELECT current_database() || ':' || count(*) FROM audit.log").await, "fed_billing:1");
    assert_eq!(one("SELECT current_database()").await, "fed_main");
    // Writes follow their table, in and out of transactions; prepared statements too.
    c.execute("INSERT INTO invoices VALUES ($1, $2, $3)", &[&12i32, &1i32, &5i32]).await.unwrap();
    c.batch_execute("BEGIN; UPDATE users SET name = 'ann2' WHERE id = 1; COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE invoices SET total = total + 1 WHERE id = 12").await.unwrap();
    let e = c.batch_execute("UPDATE users SET name = 'x' WHERE id = 2").await.unwrap_err();
    assert!(crate::support::message(&e).contains("cannot span shards or clusters"), "{e}");
    c.batch_execute("COMMIT").await.unwrap();
    let billing = pg.connect("postgres", "fed_billing").await;
    assert_eq!(crate::support::scalar(&billing, "SELECT total FROM invoices WHERE id = 12").await.unwrap(), "6");
    let main = pg.connect("postgres", "fed_main").await;
    assert_eq!(crate::support::scalar(&main, "SELECT name FROM users WHERE id = 1").await.unwrap(), "ann2");
    assert_eq!(crate::support::scalar(&main, "SELECT name FROM users WHERE id = 2").await.unwrap(), "bo");
    // A join across clusters is refused with both names.
    let e =
        c.simple_query("SELECT u.name, i.total FROM users u JOIN invoices i ON i.user_id = u.id").await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&e), "0A000");
    let m = crate::support::message(&e);
    assert!(m.contains("\"main\"") && m.contains("\"billing\""), "{m}");
}

#[tokio::test]
async fn order_by_without_limit_streams_a_k_way_merge() {
    let pg = shard_cluster().await;
    // 40,000 rows: 80,000 values in two columns, more than a final query could bind, so only a
    // streaming merge can answer.
    let fill = |cond: &str| {
        format!(
            "INSERT INTO items (id, grp, v, amount, name) SELECT g, g % 7, CASE WHEN g % 101 = 0 THEN NULL ELSE (g * 7919) % 5000 END, \
             ((g * 31) % 20000) / 100.0 - 50, 'n' || g FROM generate_series(1, 40000) g {cond}"
        )
    };
    for (r, db) in SHARDS.iter().enumerate() {
        let c = pg.connect("postgres", db).await;
        c.batch_execute(&fill(&format!("WHERE satisfies_hash_partition('hp'::regclass, 2, {r}, g::bigint)")))
            .await
            .unwrap();
    }
    let whole = pg.connect("postgres", "whole").await;
    whole.batch_execute(&fill("")).await.unwrap();
    let proxy = crate::support::start_proxy(&pg, &shard_toml(&pg)).await;
    let c = crate::support::connect(proxy.local_addr(), "postgres", None, "app").await;
    for q in [
        "SELECT id, v FROM items ORDER BY v DESC NULLS LAST, id",
        "SELECT amount, id FROM items ORDER BY amount, id DESC",
        "SELECT id, v FROM items ORDER BY v NULLS FIRST, id LIMIT 35000 OFFSET 3",
    ] {
        let ours = text_rows(&c, q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        let theirs = text_rows(&whole, q).await.unwrap();
        assert!(theirs.len() > 30_000);
        assert!(
            ours == theirs,
            "{q}: {} rows vs {}, first difference at {:?}",
            ours.len(),
            theirs.len(),
            ours.iter().zip(&theirs).position(|(a, b)| a != b)
        );
    }
    // Binary results (the extended protocol) merge on the binary values.
    let q = "SELECT id, v FROM items WHERE grp < $1 ORDER BY v, id";
    let key = |rows: Vec<tokio_postgres::Row>| -> Vec<(i64, Option<i32>)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let ours = key(c.query(q, &[&7i32]).await.unwrap());
    assert_eq!(ours.len(), 40_000);
    assert!(ours == key(whole.query(q, &[&7i32]).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_after_parse_describe_flush_runs_on_its_keys_shard() {
    let pg = shard_cluster().await;
    let a = 1i64;
    let b = (2..100).find(|&k| shard_of(k) != shard_of(a)).unwrap();
    for (k, v) in [(a, 111), (b, 222)] {
        let c = pg.connect("postgres", SHARDS[shard_of(k)]).await;
        c.execute("INSERT INTO items (id, grp, v) VALUES ($1, 0, $2)", &[&k, &v]).await.unwrap();
    }
    let proxy = crate::support::start_proxy(&pg, &shard_toml(&pg)).await;
    let addr = proxy.local_addr();
    let values = tokio::task::spawn_blocking(move || {
        let mut c = crate::raw::RawClient::login(addr, "postgres", "app");
        let mut got = Vec::new();
        for (i, k) in [a, b, b, a].into_iter().enumerate() {
            // asyncpg's pattern: the statement is described first (no key yet: some shard),
            // then bound with the key after a Flush.
            let name = format!("s{i}");
            c.parse(&name, "SELECT v FROM items WHERE id = $1");
            c.describe_statement(&name);
            c.send(b'H', b"");
            assert_eq!(c.until(b'T'), vec![b'1', b't', b'T']);
            c.bind_text("", &name, &[&k.to_string()]);
            c.execute("");
            c.send(b'S', b"");
            let mut value = None;
            loop {
                let (t, body) = c.read();
                match t {
                    b'D' => value = Some(String::from_utf8_lossy(&body[6..]).into_owned()),
                    b'E' => panic!("key {k}: {}", String::from_utf8_lossy(&body)),
                    b'Z' => break,
                    _ => {}
                }
            }
            got.push(value);
        }
        got
    })
    .await
    .unwrap();
    let want: Vec<Option<String>> = ["111", "222", "222", "111"].iter().map(|s| Some(s.to_string())).collect();
    assert_eq!(values, want);
}

#[test]
fn python_drivers_route_by_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = rt.block_on(shard_cluster());
    let proxy = rt.block_on(crate::support::start_proxy(&pg, &shard_toml(&pg)));
    let addr = proxy.local_addr();
    rt.block_on(async {
        let c = crate::support::connect(addr, "postgres", None, "app").await;
        let rows: Vec<String> = (1..=300i64).map(|id| format!("({id}, {}, {})", id % 7, id * 37 % 1000)).collect();
        c.batch_execute(&format!("INSERT INTO items (id, grp, v) VALUES {}", rows.join(", "))).await.unwrap();
    });
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/sharded.py");
    let out = std::process::Command::new(crate::drivers::python())
        .arg(&script)
        .args(["127.0.0.1", &addr.port().to_string(), "postgres", "app", "300"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("ok sharded 300"), "{text}");
    drop(proxy);
    drop(rt);
}
