//! Session state in transaction mode: settings follow the client to every server and never
//! leak to another client; state that cannot be replayed pins the client until it ends.

use std::time::Duration;

use futures_util::StreamExt;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{connect, scalar, sqlstate, start_proxy};

const ONE_SERVER: &str = "[proxy]\nauth = \"trust\"\n[pool]\nsize = 1\nmax_pinned = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_their_client_and_never_leak() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create schema s1; create table s1.only_in_s1(x int); grant all on schema s1 to public; grant all on s1.only_in_s1 to public;");
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 2\n").await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("SET search_path = s1").await.unwrap();
    a.simple_query("SET TimeZone = 'Asia/Tokyo'").await.unwrap();
    a.simple_query("SET app.tenant = '42'").await.unwrap();
    for _ in 0..10 {
        // Interleave so both clients use both servers.
        assert_eq!(scalar(&a, "show search_path").await.unwrap(), "s1");
        assert_eq!(scalar(&a, "show timezone").await.unwrap(), "Asia/Tokyo");
        assert_eq!(scalar(&a, "select current_setting('app.tenant')").await.unwrap(), "42");
        assert_eq!(scalar(&a, "select count(*) from only_in_s1").await.unwrap(), "0");
        assert_eq!(scalar(&b, "show search_path").await.unwrap(), "\"$user\", public");
        assert_ne!(scalar(&b, "show timezone").await.unwrap(), "Asia/Tokyo");
        assert_eq!(scalar(&b, "select current_setting('app.tenant', true)").await.unwrap(), "");
    }
    // A SET rolled back is forgotten; RESET returns to the default.
    a.simple_query("BEGIN; SET search_path = public; ROLLBACK").await.unwrap();
    assert_eq!(scalar(&a, "show search_path").await.unwrap(), "s1");
    a.simple_query("RESET search_path").await.unwrap();
    assert_eq!(scalar(&a, "show search_path").await.unwrap(), "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_of_a_shape_seen_before_still_follows_its_client() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 1\n").await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    // A local set_config (no effect outside a transaction), then one of the same shape that is
    // not local: the second must still be seen as a setting of this client only.
    a.simple_query("select set_config('search_path', 'pg_catalog', 'true')").await.unwrap();
    a.simple_query("select set_config('search_path', 'evil', 'false')").await.unwrap();
    for _ in 0..3 {
        assert_eq!(scalar(&a, "show search_path").await.unwrap(), "evil");
        assert_eq!(scalar(&b, "show search_path").await.unwrap(), "\"$user\", public", "leaked to another client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_pin_until_discard_all() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, ONE_SERVER).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("create temp table scratch(x int)").await.unwrap();
    a.simple_query("insert into scratch values (1), (2)").await.unwrap();
    assert_eq!(scalar(&a, "select count(*) from scratch").await.unwrap(), "2");
    // B must wait: the only server is pinned to A.
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b_query = tokio::spawn(async move { (scalar(&b, "select 'b'").await, b) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_query.is_finished(), "B ran while A's temp table pinned the server");
    a.simple_query("DISCARD ALL").await.unwrap();
    let (r, b) = tokio::time::timeout(Duration::from_secs(5), b_query).await.unwrap().unwrap();
    assert_eq!(r.unwrap(), "b");
    let err = b.simple_query("select * from scratch").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01", "the temp table is gone with the DISCARD ALL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_transaction_mode() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 2\n").await;
    let (a, mut conn) = crate::support::client_config(proxy.local_addr(), "app", None, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    a.simple_query("LISTEN jobs").await.unwrap();
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    b.simple_query("NOTIFY jobs, 'first'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, "first");
    // After UNLISTEN the client is unpinned and its server goes back to the pool.
    a.simple_query("UNLISTEN jobs").await.unwrap();
    assert_eq!(scalar(&a, "select 1").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_and_hold_cursors_keep_their_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, ONE_SERVER.replace("size = 1", "size = 2").as_str()).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("select pg_advisory_lock(77)").await.unwrap();
    let pid = scalar(&a, "select pg_backend_pid()").await.unwrap();
    for _ in 0..3 {
        assert_eq!(scalar(&a, "select pg_backend_pid()").await.unwrap(), pid);
        assert_eq!(
            scalar(&a, "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()")
                .await
                .unwrap(),
            "1"
        );
    }
    a.simple_query("select pg_advisory_unlock(77)").await.unwrap();
    a.simple_query("begin; declare c cursor with hold for select generate_series(1, 5); commit").await.unwrap();
    assert_eq!(scalar(&a, "fetch 2 from c").await.unwrap(), "1");
    assert_eq!(scalar(&a, "fetch 1 from c").await.unwrap(), "3");
    a.simple_query("close c").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_cap_refuses_with_a_clear_error() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, ONE_SERVER.replace("size = 1", "size = 2").as_str()).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("create temp table t(x int)").await.unwrap();
    let err = b.simple_query("create temp table t(x int)").await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(crate::support::message(&err).contains("pin"), "{err}");
    // B is still usable for ordinary work.
    assert_eq!(scalar(&b, "select 'ok'").await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_level_prepare_execute_deallocate() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 2\n").await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("PREPARE twice(int) AS SELECT $1 * 2").await.unwrap();
    for i in 0..5 {
        b.simple_query("select 1").await.unwrap();
        assert_eq!(scalar(&a, &format!("EXECUTE twice({i})")).await.unwrap(), (i * 2).to_string());
    }
    a.simple_query("DEALLOCATE twice").await.unwrap();
    let err = a.simple_query("EXECUTE twice(1)").await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_unpins_every_kind_of_state() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, ONE_SERVER).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = std::sync::Arc::new(connect(proxy.local_addr(), "app", None, "postgres").await);
    for state in [
        "create temp table tt(x int)",
        "listen some_channel",
        "select pg_advisory_lock(99)",
        "begin; declare hc cursor with hold for select 1; commit",
        "prepare p1 as select 1",
    ] {
        a.simple_query(state).await.unwrap();
        let b_query = tokio::spawn({
            let b = b.clone();
            async move { scalar(&b, "select 'b'").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!b_query.is_finished(), "`{state}` must pin A's server");
        a.simple_query("DISCARD ALL").await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), b_query).await.expect("unpinned by DISCARD ALL");
        assert_eq!(r.unwrap().unwrap(), "b");
    }
}
