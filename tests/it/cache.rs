//! The result cache against real PostgreSQL (with pg_stat_statements counting what reaches it)
//! and real Redis: hits, invalidation across two proxies, refusals, per-user and per-setting
//! keys, Redis dying under load, and keys lost in Redis never reviving old entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgweir::app::Proxy;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::harness::redis::RedisServer;
use crate::support::{connect, scalar, start_proxy};

fn counting_cluster() -> PgCluster {
    let pg = PgCluster::start(PgOptions {
        extra_conf: vec![
            "shared_preload_libraries = 'pg_stat_statements'".into(),
            "pg_stat_statements.track = 'all'".into(),
        ],
        ..PgOptions::default()
    });
    pg.psql(
        "postgres",
        "postgres",
        "CREATE EXTENSION pg_stat_statements;
         CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         INSERT INTO items SELECT g, 'item' || g, g FROM generate_series(1, 100) g;
         GRANT ALL ON items TO PUBLIC;",
    );
    pg
}

/// How many times statements whose text contains `marker` ran on the server.
async fn calls(direct: &tokio_postgres::Client, marker: &str) -> i64 {
    let row = direct
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_statements%'",
            &[&marker],
        )
        .await
        .unwrap();
    row.get(0)
}

fn config(rules: &str, extra: &str) -> String {
    format!("[proxy]\nauth = \"trust\"\n[pool]\nmode = \"transaction\"\nsize = 4\n[metrics]\nlisten = \"127.0.0.1:0\"\n[cache]\n{extra}\n{rules}")
}

const ITEMS_RULE: &str = "[[cache.rules]]\nname = \"items\"\ntables = [\"items\"]\nttl = \"60s\"\n";
const EVERYTHING: &str = "[[cache.rules]]\nname = \"all\"\nregex = \".\"\nttl = \"60s\"\n";

/// One metric's value (summed over label sets that contain `labels`).
async fn metric(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.metrics_addr().expect("metrics listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' '))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_skip_the_server_and_writes_invalidate_them() {
    let pg = counting_cluster();
    let direct = pg.connect("postgres", "postgres").await;
    let proxy = start_proxy(&pg, &config(ITEMS_RULE, "")).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;

    // Simple protocol.
    let q = "SELECT sum(qty) /* simple-1 */ FROM items";
    for _ in 0..3 {
        assert_eq!(scalar(&c, q).await.unwrap(), "5050");
    }
    assert_eq!(calls(&direct, "simple-1").await, 1, "two of three answered from the cache");

    // Extended protocol with a parameter (tokio-postgres prepares a named statement).
    let stmt = "SELECT name /* ext-1 */ FROM items WHERE id = $1";
    for id in [7i32, 7, 8, 7] {
        let row = c.query_one(stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("item{id}"));
    }
    assert_eq!(calls(&direct, "ext-1").await, 2, "one fill per parameter value");

    // A write through the proxy invalidates before its commit is acknowledged.
    c.simple_query("UPDATE items SET qty = qty + 1 WHERE id = 1").await.unwrap();
    assert_eq!(scalar(&c, q).await.unwrap(), "5051");
    // Inside a transaction, at commit.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE items SET qty = qty + 1 WHERE id = 1").await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(scalar(&c, q).await.unwrap(), "5052");
    c.execute("UPDATE items SET name = 'renamed' WHERE id = $1", &[&7i32]).await.unwrap();
    assert_eq!(c.query_one(stmt, &[&7i32]).await.unwrap().get::<_, String>(0), "renamed");

    assert!(metric(&proxy, "pgweir_cache_hits_total", "rule=\"items\"").await >= 3.0);
    assert!(metric(&proxy, "pgweir_cache_misses_total", "rule=\"items\"").await >= 4.0);
    assert!(metric(&proxy, "pgweir_cache_stored_bytes_total", "rule=\"items\"").await > 0.0);
    assert!(metric(&proxy, "pgweir_cache_served_bytes_total", "rule=\"items\"").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_never_be_cached_reaches_postgres_every_time() {
    let pg = counting_cluster();
    pg.psql("postgres", "postgres", "CREATE SEQUENCE seq; CREATE TABLE big (t text); INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 20);");
    let direct = pg.connect("postgres", "postgres").await;
    let redis = RedisServer::start();
    let proxy =
        start_proxy(&pg, &config(EVERYTHING, &format!("redis_url = \"{}\"\nmax_entry_bytes = 4096", redis.url())))
            .await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let never = [
        ("SELECT now() /* nc-now */ FROM items LIMIT 1", "volatile_function"),
        ("SELECT random() /* nc-random */ FROM items LIMIT 1", "volatile_function"),
        ("SELECT nextval('seq') /* nc-nextval */", "volatile_function"),
        ("SELECT current_user /* nc-user */ FROM items LIMIT 1", "volatile_function"),
        ("SELECT id /* nc-lock */ FROM items WHERE id = 1 FOR UPDATE", "locking_read"),
        ("SELECT count(*) /* nc-system */ FROM pg_class", "system_table"),
        ("SELECT count(*) /* nc-multi */ FROM items; SELECT 1", "multi_statement"),
        ("SELECT t /* nc-big */ FROM big", "too_large"),
        ("UPDATE items SET qty = qty /* nc-write */ WHERE id = 2", "write"),
    ];
    for (sql, reason) in never {
        let marker = sql.split("/* ").nth(1).unwrap().split(' ').next().unwrap();
        let before = metric(&proxy, "pgweir_cache_refusals_total", &format!("reason=\"{reason}\"")).await;
        for _ in 0..3 {
            c.simple_query(sql).await.unwrap();
        }
        // pg_stat_statements counts the statements of a multi-statement string separately.
        assert_eq!(calls(&direct, marker).await, 3, "{sql} must reach PostgreSQL every time");
        if reason != "write" {
            let after = metric(&proxy, "pgweir_cache_refusals_total", &format!("reason=\"{reason}\"")).await;
            assert!(after >= before + 3.0, "{sql}: refusals counted as {reason}: {before} -> {after}");
        }
    }
    // Inside a transaction that has written: the session's own uncommitted row shows.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO items VALUES (1000, 'new', 1)").await.unwrap();
    for _ in 0..3 {
        assert_eq!(scalar(&c, "SELECT count(*) - 0 /* nc-txn */ FROM items").await.unwrap(), "101");
    }
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(calls(&direct, "nc-txn").await, 3);
    // A session pinned by a temp table.
    c.simple_query("CREATE TEMP TABLE scratch AS SELECT 1 AS x").await.unwrap();
    for _ in 0..3 {
        scalar(&c, "SELECT count(*) /* nc-temp */ FROM scratch").await.unwrap();
    }
    assert_eq!(calls(&direct, "nc-temp").await, 3);
    // Errors are never stored: the same text succeeds once the data changes.
    let failing = "SELECT 1 / (count(*) - 100) /* nc-error */ FROM items";
    c.simple_query(failing).await.expect_err("division by zero");
    direct.simple_query("DELETE FROM items WHERE id = 100").await.unwrap();
    assert_eq!(scalar(&c, failing).await.unwrap(), "-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_sharing_redis_never_serve_a_stale_read() {
    let pg = counting_cluster();
    let redis = RedisServer::start();
    let extra = format!("redis_url = \"{}\"", redis.url());
    let a = start_proxy(&pg, &config(ITEMS_RULE, &extra)).await;
    let b = start_proxy(&pg, &config(ITEMS_RULE, &extra)).await;
    let ca = connect(a.local_addr(), "postgres", None, "postgres").await;
    let cb = connect(b.local_addr(), "postgres", None, "postgres").await;
    let read = "SELECT qty /* fleet */ FROM items WHERE id = 5";
    // Warm both L1s first.
    assert_eq!(scalar(&cb, read).await.unwrap(), "5");
    assert_eq!(scalar(&ca, read).await.unwrap(), "5");
    let mut stale = 0;
    for i in 0..1000 {
        ca.simple_query(&format!("UPDATE items SET qty = {i} WHERE id = 5")).await.unwrap();
        if scalar(&cb, read).await.unwrap() != i.to_string() {
            stale += 1;
        }
        // And B's reads are cached between writes.
        scalar(&cb, read).await.unwrap();
    }
    assert_eq!(stale, 0, "reads through B after a write through A");
    assert!(metric(&b, "pgweir_cache_hits_total", "rule=\"items\"").await >= 900.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_tenants_and_time_zones_get_their_own_entries() {
    let pg = counting_cluster();
    pg.psql(
        "postgres",
        "postgres",
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE auditor;
         GRANT auditor TO alice;
         CREATE TABLE docs (owner text, body text);
         INSERT INTO docs VALUES ('alice', 'a1'), ('bob', 'b1'), ('auditor', 'x1');
         ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON docs USING (owner = current_user);
         GRANT SELECT ON docs TO PUBLIC;
         CREATE TABLE tenant_docs (tenant text, body text);
         INSERT INTO tenant_docs VALUES ('t1', 'one'), ('t2', 'two');
         ALTER TABLE tenant_docs ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant ON tenant_docs USING (tenant = current_setting('app.tenant', true));
         GRANT SELECT ON tenant_docs TO PUBLIC;
         CREATE TABLE events (ts timestamptz); INSERT INTO events VALUES ('2024-01-01 00:00:00+00');
         GRANT SELECT ON events TO PUBLIC;",
    );
    let rules = "[[cache.rules]]\nname = \"rls\"\ntables = [\"docs\", \"tenant_docs\", \"events\"]\n";
    let proxy = start_proxy(&pg, &config(rules, "")).await;
    let addr = proxy.local_addr();
    let docs = "SELECT string_agg(body, ',' ORDER BY body) FROM docs";
    for _ in 0..2 {
        let alice = connect(addr, "alice", None, "postgres").await;
        let bob = connect(addr, "bob", None, "postgres").await;
        assert_eq!(scalar(&alice, docs).await.unwrap(), "a1");
        assert_eq!(scalar(&bob, docs).await.unwrap(), "b1");
        // SET ROLE: a different identity in one user's session.
        alice.simple_query("SET ROLE auditor").await.unwrap();
        assert_eq!(scalar(&alice, docs).await.unwrap(), "x1");
        alice.simple_query("RESET ROLE").await.unwrap();
        assert_eq!(scalar(&alice, docs).await.unwrap(), "a1");
    }
    let tenants = "SELECT string_agg(body, ',') FROM tenant_docs";
    let zones = "SELECT ts::text FROM events";
    for _ in 0..2 {
        let s1 = connect(addr, "alice", None, "postgres").await;
        let s2 = connect(addr, "alice", None, "postgres").await;
        s1.simple_query("SET app.tenant = 't1'").await.unwrap();
        s2.simple_query("SET app.tenant = 't2'").await.unwrap();
        assert_eq!(scalar(&s1, tenants).await.unwrap(), "one");
        assert_eq!(scalar(&s2, tenants).await.unwrap(), "two");
        s1.simple_query("SET TimeZone = 'UTC'").await.unwrap();
        s2.simple_query("SET TimeZone = 'Asia/Tokyo'").await.unwrap();
        assert_eq!(scalar(&s1, zones).await.unwrap(), "2024-01-01 00:00:00+00");
        assert_eq!(scalar(&s2, zones).await.unwrap(), "2024-01-01 09:00:00+09");
    }
    assert!(metric(&proxy, "pgweir_cache_hits_total", "rule=\"rls\"").await >= 4.0, "the second rounds hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_load_fails_no_query_and_hits_resume() {
    let pg = counting_cluster();
    let mut redis = RedisServer::start();
    // L1 off: Redis is the only store, so its death is felt by every lookup.
    let extra = format!("redis_url = \"{}\"\nl1_max_bytes = 0\nbreaker_cooldown = \"200ms\"", redis.url());
    let proxy = start_proxy(&pg, &config(ITEMS_RULE, &extra)).await;
    let addr = proxy.local_addr();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = connect(addr, "postgres", None, "postgres").await;
            let q = format!("SELECT sum(qty) /* load-{} */ FROM items", w % 2);
            while !stop.load(Ordering::Relaxed) {
                match scalar(&c, &q).await {
                    Ok(v) if v == "5050" => done.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed query: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let wait_for = |n: u64| {
        let done = done.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(30);
            let start = done.load(Ordering::Relaxed);
            while done.load(Ordering::Relaxed) < start + n {
                assert!(Instant::now() < until, "load stalled");
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(500).await;
    let hits_before = metric(&proxy, "pgweir_cache_hits_total", "").await;
    assert!(hits_before > 100.0, "cached load: {hits_before} hits");
    redis.stop();
    wait_for(500).await;
    let unavailable = metric(&proxy, "pgweir_cache_refusals_total", "reason=\"redis_unavailable\"").await;
    assert!(unavailable > 0.0, "lookups bypassed while Redis was down");
    redis.restart();
    let hits_down = metric(&proxy, "pgweir_cache_hits_total", "").await;
    let until = Instant::now() + Duration::from_secs(30);
    let mut hits_after = hits_down;
    while hits_after < hits_down + 500.0 && Instant::now() < until {
        wait_for(200).await;
        hits_after = metric(&proxy, "pgweir_cache_hits_total", "").await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no client query failed because of Redis");
    assert!(hits_after > hits_down + 500.0, "hits resumed: {hits_down} -> {hits_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_redis_keys_never_revive_an_old_entry() {
    let pg = counting_cluster();
    let mut redis = RedisServer::start();
    let proxy = start_proxy(&pg, &config(ITEMS_RULE, &format!("redis_url = \"{}\"", redis.url()))).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let q = "SELECT qty /* revive */ FROM items WHERE id = 3";
    assert_eq!(scalar(&c, q).await.unwrap(), "3");
    c.simple_query("UPDATE items SET qty = 33 WHERE id = 3").await.unwrap();
    assert_eq!(scalar(&c, q).await.unwrap(), "33");
    // Redis restarts empty: every version is gone. The old entry ("3") is still in L1 under
    // its old key; versions restarting from a counter would address it again.
    redis.stop();
    redis.restart();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(scalar(&c, q).await.unwrap(), "33", "never the pre-write value");
        if metric(&proxy, "pgweir_cache_hits_total", "").await >= 2.0 || Instant::now() > until {
            break;
        }
    }
    assert_eq!(scalar(&c, q).await.unwrap(), "33");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_come_from_the_primary_not_a_lagging_replica() {
    let pg = counting_cluster();
    let mut replica = pg.start_replica();
    // Replay held back: a fill from the replica would store the pre-write row.
    let conf = replica.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nrecovery_min_apply_delay = '2s'\n");
    std::fs::write(&conf, text).unwrap();
    replica.restart();
    let mut cfg = config(ITEMS_RULE, "");
    cfg.push_str(&format!(
        "[routing]\nprimary_reads = \"never\"\nhealth_interval = \"100ms\"\n[clusters.default]\nprimary = \"postgres://127.0.0.1:1\"\nreplicas = [\"postgres://127.0.0.1:{}\"]\n",
        replica.port()
    ));
    let proxy = start_proxy(&pg, &cfg).await;
    let writer = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let reader = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let q = "SELECT qty /* lag */ FROM items WHERE id = 4";
    assert_eq!(scalar(&reader, q).await.unwrap(), "4");
    writer.simple_query("UPDATE items SET qty = 44 WHERE id = 4").await.unwrap();
    // Another session (no read-your-writes position of its own) reads at once.
    assert_eq!(scalar(&reader, q).await.unwrap(), "44");
    assert_eq!(scalar(&reader, q).await.unwrap(), "44");
}
