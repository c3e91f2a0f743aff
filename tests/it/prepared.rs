//! Named prepared statements in transaction mode: shared across server connections, prepared
//! lazily, bounded, answered in order.

use std::process::Command;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{connect, scalar, sqlstate, start_proxy};

const TRUST: &str = "[proxy]\nauth = \"trust\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_across_servers() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql(
        "app",
        "app_db",
        "create table kv(k int primary key, v text); insert into kv select g, 'v' || g from generate_series(1, 100) g",
    );
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\n")).await;
    let mut tasks = Vec::new();
    for c in 0..20i32 {
        let addr = proxy.local_addr();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr, "app", None, "app_db").await;
            let get = client.prepare("select v from kv where k = $1").await.unwrap();
            let add = client.prepare("select $1::int + $2::int").await.unwrap();
            for i in 0..30i32 {
                let k = (c * 7 + i) % 100 + 1;
                let row = client.query_one(&get, &[&k]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("v{k}"));
                let row = client.query_one(&add, &[&c, &i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), c + i);
                if i % 10 == 0 {
                    // A transaction around prepared statements keeps one server throughout.
                    let tx = client.transaction().await.unwrap();
                    let r = tx.query_one(&get, &[&k]).await.unwrap();
                    assert_eq!(r.get::<_, String>(0), format!("v{k}"));
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_unknown_names_fail_like_postgres() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let addr = proxy.local_addr();
    let tags = tokio::task::spawn_blocking(move || {
        let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
        a.parse("s1", "select 1");
        a.send(b'S', b"");
        assert_eq!(a.until(b'Z'), vec![b'1', b'Z']);
        // Same name again: 42P05, and the rest of the batch is skipped up to Sync.
        a.parse("s1", "select 2");
        a.bind("", "s1");
        a.execute("");
        a.send(b'S', b"");
        let (t, body) = a.read();
        assert_eq!(t, b'E');
        assert!(String::from_utf8_lossy(&body).contains("42P05"));
        assert_eq!(a.until(b'Z'), vec![b'Z']);
        // Unknown name: 26000.
        a.bind("", "nope");
        a.execute("");
        a.send(b'S', b"");
        let (t, body) = a.read();
        assert_eq!(t, b'E');
        assert!(String::from_utf8_lossy(&body).contains("26000"));
        assert_eq!(a.until(b'Z'), vec![b'Z']);
        // Close answers CloseComplete, and the name is free again.
        let mut close = vec![b'S'];
        close.extend_from_slice(b"s1\0");
        a.send(b'C', &close);
        a.parse("s1", "select 3");
        a.bind("", "s1");
        a.execute("");
        a.send(b'S', b"");
        a.until(b'Z')
    })
    .await
    .unwrap();
    assert_eq!(tags, vec![b'3', b'1', b'2', b'D', b'C', b'Z']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_statements_stay_bounded_and_correct() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\n[prepared]\nserver_cache_size = 50\n")).await;
    let client = connect(proxy.local_addr(), "app", None, "postgres").await;
    let early = client.prepare("select 'early'::text").await.unwrap();
    let before = crate::support::rss_bytes();
    // 100,000 distinct statements, 25 in flight at a time (tokio-postgres pipelines them);
    // each is closed after use, as drivers with a bounded statement cache do. A server holds
    // at most its cache size plus what one pipeline has in flight, and early statements work.
    for chunk in 0..4000i32 {
        let futs = (0..25i32).map(|j| {
            let client = &client;
            async move {
                let i = chunk * 25 + j;
                let st = client.prepare(&format!("select {i}::int4 + $1::int4")).await.unwrap();
                client.query_one(&st, &[&1i32]).await.unwrap().get::<_, i32>(0) == i + 1
            }
        });
        assert!(futures_util::future::join_all(futs).await.into_iter().all(|ok| ok));
        if chunk % 400 == 0 {
            let r = client.query_one(&early, &[]).await.unwrap();
            assert_eq!(r.get::<_, String>(0), "early", "an early statement is re-prepared transparently");
            let on_server = scalar(&client, "select count(*) from pg_prepared_statements").await.unwrap();
            assert!(on_server.parse::<usize>().unwrap() <= 50 + 25 + 1, "{on_server} statements on one server");
        }
    }
    let grown = crate::support::rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "memory grew by {grown} bytes over 100k statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_statement_limit_is_a_clear_error() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[prepared]\nmax_per_client = 5\n")).await;
    let client = connect(proxy.local_addr(), "app", None, "postgres").await;
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(client.prepare(&format!("select {i}")).await.unwrap());
    }
    let err = client.prepare("select 'one too many'").await.unwrap_err();
    assert_eq!(sqlstate(&err), "54000", "{err}");
    // Still usable.
    assert_eq!(client.query_one(&kept[0], &[]).await.unwrap().get::<_, i32>(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_result_type_is_reported_once_then_reprepared() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("app", "app_db", "create table shape(a int)");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let client = connect(proxy.local_addr(), "app", None, "app_db").await;
    let st = client.prepare("select * from shape").await.unwrap();
    client.query(&st, &[]).await.unwrap();
    pg.psql("app", "app_db", "alter table shape add column b int");
    let err = client.query(&st, &[]).await.unwrap_err();
    assert!(crate::support::message(&err).contains("cached plan must not change result type"), "{err}");
    // A fresh prepare of the same text works (the stale server copy was closed).
    let st2 = client.prepare("select * from shape").await.unwrap();
    assert_eq!(st2.columns().len(), 2);
    client.query(&st2, &[]).await.unwrap();
}

#[test]
fn pgbench_prepared_mode_through_a_small_pool() {
    let pg = PgCluster::start(PgOptions { max_connections: 50, ..PgOptions::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 4\n")));
    let port = proxy.local_addr().port().to_string();
    let pgbench = |args: &[&str]| {
        let out = Command::new(pg.bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    pgbench(&["-i", "-q", "-s", "1"]);
    let runs: [&[&str]; 2] = [
        &["-M", "prepared", "-S", "-c", "64", "-j", "2", "-T", "5"],
        &["-M", "prepared", "-c", "16", "-j", "2", "-T", "5"],
    ];
    for args in runs {
        let text = pgbench(args);
        assert!(text.contains("number of failed transactions: 0 (0.000%)"), "{text}");
    }
    drop(rt);
}
