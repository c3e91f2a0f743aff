//! Pool modes, waiting, cancel, and what happens when clients or servers disappear.

use std::time::{Duration, Instant};

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{connect, eventually, scalar, sqlstate, start_proxy, start_proxy_url, Severable};

const TRUST: &str = "[proxy]\nauth = \"trust\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_one_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\nmode = \"transaction\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    let pa = scalar(&a, "select pg_backend_pid()").await.unwrap();
    let pb = scalar(&b, "select pg_backend_pid()").await.unwrap();
    assert_eq!(pa, pb, "both clients multiplexed onto the single server connection");
    // A transaction keeps its server: B waits until A commits.
    a.simple_query("begin").await.unwrap();
    a.simple_query("create temp table t_hold(x int)").await.unwrap();
    let b_query = tokio::spawn(async move { scalar(&b, "select 42").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b_query.is_finished(), "B must wait for A's transaction");
    a.simple_query("rollback").await.unwrap();
    assert_eq!(b_query.await.unwrap().unwrap(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_a_server_per_client() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\nmode = \"session\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    let pa1 = scalar(&a, "select pg_backend_pid()").await.unwrap();
    let pb = scalar(&b, "select pg_backend_pid()").await.unwrap();
    a.simple_query("set application_name = 'kept'").await.unwrap();
    let pa2 = scalar(&a, "select pg_backend_pid()").await.unwrap();
    assert_eq!(pa1, pa2);
    assert_ne!(pa1, pb);
    assert_eq!(scalar(&a, "show application_name").await.unwrap(), "kept");
    // When A leaves, its server is reset (DISCARD ALL) before C gets it.
    drop(a);
    let c = connect(proxy.local_addr(), "app", None, "postgres").await;
    let pc = scalar(&c, "select pg_backend_pid()").await.unwrap();
    assert_eq!(pc, pa1, "C reuses A's server");
    assert_ne!(scalar(&c, "show application_name").await.unwrap(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_gives_53300_and_the_client_stays_usable() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\nwait_timeout = \"300ms\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("begin").await.unwrap();
    let started = Instant::now();
    let err = b.simple_query("select 1").await.expect_err("no server within the wait");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(crate::support::message(&err).contains("postgres/app"), "the message names the pool: {err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Extended protocol too: the refused request is consumed up to its Sync.
    let err = b.query_typed("select $1::int", &[(&1i32, tokio_postgres::types::Type::INT4)]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    a.simple_query("commit").await.unwrap();
    assert_eq!(scalar(&b, "select 7").await.unwrap(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_transaction_leaves_nothing_behind() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table leftovers(x int); grant all on leftovers to public;");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("begin").await.unwrap();
    a.simple_query("insert into leftovers values (1)").await.unwrap();
    drop(a);
    let pg2 = &pg;
    let clean = eventually(Duration::from_secs(5), || {
        pg2.psql(
            "postgres",
            "postgres",
            "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
        ) == "0"
    })
    .await;
    assert!(clean, "a server connection stayed idle in transaction");
    assert_eq!(pg.psql("postgres", "postgres", "select count(*) from leftovers"), "0");
    // The (single) server connection was cleaned, not leaked: another client can use it.
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    assert_eq!(scalar(&b, "select count(*) from leftovers").await.unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_server_fails_only_its_client() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 3\n")).await;
    let addr = proxy.local_addr();
    let a = connect(addr, "app", None, "postgres").await;
    let b = connect(addr, "app", None, "postgres").await;
    b.simple_query("select 1").await.unwrap();
    let sleeper = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    crate::support::wait_until_running(&pg, "select pg_sleep(30)").await;
    pg.psql(
        "postgres",
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where query = 'select pg_sleep(30)'",
    );
    let err = tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap().unwrap_err();
    let code = sqlstate(&err);
    assert!(code == "57P01" || code.starts_with("08") || err.is_closed(), "{err}");
    assert_eq!(scalar(&b, "select 'still here'").await.unwrap(), "still here");
    let c = connect(addr, "app", None, "postgres").await;
    assert_eq!(scalar(&c, "select 2").await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severed_server_connection_gives_class_08() {
    let pg = PgCluster::start(PgOptions::default());
    let relay = Severable::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let proxy = start_proxy_url(&format!("postgres://{}", relay.addr), &format!("{TRUST}[pool]\nsize = 2\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let sleeper = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await.map(|_| ()) });
    crate::support::wait_until_running(&pg, "select pg_sleep(30)").await;
    relay.sever();
    let err = tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err}");
    // New clients get fresh server connections; the dead ones are never handed out.
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    assert_eq!(scalar(&b, "select 'fresh'").await.unwrap(), "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move {
        let t = Instant::now();
        (a.simple_query("select pg_sleep(8)").await.map(|_| ()), t)
    });
    let pg2 = &pg;
    assert!(
        eventually(Duration::from_secs(5), || {
            pg2.psql("postgres", "postgres", "select count(*) from pg_stat_activity where query = 'select pg_sleep(8)'")
                == "1"
        })
        .await
    );
    let sent = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (res, _) = sleeper.await.unwrap();
    let err = res.unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(sent.elapsed() < Duration::from_secs(1), "cancel took {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_client_waiting_for_a_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\nwait_timeout = \"20s\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    a.simple_query("begin").await.unwrap();
    let token = b.cancel_token();
    let waiter = tokio::spawn(async move {
        let r = b.simple_query("select 1").await.map(|_| ());
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (res, b) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(sqlstate(&res.unwrap_err()), "57014");
    assert!(sent.elapsed() < Duration::from_secs(2));
    a.simple_query("commit").await.unwrap();
    assert_eq!(scalar(&b, "select 3").await.unwrap(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_idle_connections_are_replaced_not_handed_out() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let first = scalar(&a, "select pg_backend_pid()").await.unwrap();
    // Kill the now idle pooled server connection behind the proxy's back.
    pg.psql("postgres", "postgres", &format!("select pg_terminate_backend({first}, 5000)"));
    for _ in 0..3 {
        let pid = scalar(&a, "select pg_backend_pid()").await.expect("a fresh server, no error");
        assert_ne!(pid, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients_get_53300() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nmax_client_connections = 2\n")).await;
    let _a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let _b = connect(proxy.local_addr(), "app", None, "postgres").await;
    let err = crate::support::try_connect(proxy.local_addr(), "app", None, "postgres").await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300", "{err}");
    drop(_a);
    let ok = eventually(Duration::from_secs(5), || true).await;
    assert!(ok);
    let mut connected = false;
    for _ in 0..50 {
        if crate::support::try_connect(proxy.local_addr(), "app", None, "postgres").await.is_ok() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected, "a slot frees up when a client leaves");
}

fn proxy_backends(pg: &PgCluster) -> usize {
    pg.psql(
        "postgres",
        "postgres",
        "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
    )
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_and_idle_timeout_shape_the_pool() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 6\nmin_idle = 3\nidle_timeout = \"1s\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let pg2 = &pg;
    assert!(eventually(Duration::from_secs(5), || proxy_backends(pg2) == 3).await, "min_idle opens 3");
    // A burst opens more; after idle_timeout they close again down to min_idle.
    let mut holders = Vec::new();
    for _ in 0..5 {
        let c = connect(proxy.local_addr(), "app", None, "postgres").await;
        c.simple_query("begin").await.unwrap();
        holders.push(c);
    }
    assert_eq!(proxy_backends(&pg), 5);
    for c in &holders {
        c.simple_query("commit").await.unwrap();
    }
    assert!(eventually(Duration::from_secs(8), || proxy_backends(pg2) == 3).await, "idle ones close to min_idle");
    assert_eq!(scalar(&a, "select 1").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_after_their_lifetime() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\nlifetime = \"1s\"\n")).await;
    let a = connect(proxy.local_addr(), "app", None, "postgres").await;
    let first = scalar(&a, "select pg_backend_pid()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = scalar(&a, "select pg_backend_pid()").await.unwrap();
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_server_died_keeps_its_connection() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\n")).await;
    let a = std::sync::Arc::new(connect(proxy.local_addr(), "app", None, "postgres").await);
    let sleeper = tokio::spawn({
        let a = a.clone();
        async move { a.simple_query("select pg_sleep(30)").await.map(|_| ()) }
    });
    crate::support::wait_until_running(&pg, "select pg_sleep(30)").await;
    pg.psql(
        "postgres",
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where query = 'select pg_sleep(30)'",
    );
    let err = tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err}");
    // Same connection, next request: another server.
    assert_eq!(scalar(&a, "select 'alive'").await.unwrap(), "alive");
    // A COMMIT that the server dies under is reported as of unknown outcome.
    a.simple_query("begin").await.unwrap();
    let pid = scalar(&a, "select pg_backend_pid()").await.unwrap();
    let killer = {
        let info = pg.conninfo("postgres", "postgres");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            crate::harness::pg::try_psql(&info, &format!("select pg_terminate_backend({pid})")).unwrap();
        })
    };
    let err = a.simple_query("select pg_sleep(5); commit").await.unwrap_err();
    killer.join().unwrap();
    assert_eq!(sqlstate(&err), "08007", "{err}");
    assert_eq!(scalar(&a, "select 'still alive'").await.unwrap(), "still alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_nobody_uses_are_forgotten() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\nidle_timeout = \"1s\"\n")).await;
    for db in ["postgres", "app_db"] {
        let c = connect(proxy.local_addr(), "app", None, db).await;
        scalar(&c, "select 1").await.unwrap();
    }
    assert_eq!(proxy.context().pools.len(), 2);
    // Clients gone, connections idle past idle_timeout and closed: the pools themselves go.
    let ctx = proxy.context().clone();
    assert!(eventually(Duration::from_secs(8), || ctx.pools.is_empty()).await, "{} pools left", ctx.pools.len());
    let c = connect(proxy.local_addr(), "app", None, "postgres").await;
    assert_eq!(scalar(&c, "select 'back'").await.unwrap(), "back");
}

/// Connects through the proxy from the local address `from` (any 127.0.0.0/8 address works on
/// Linux loopback).
async fn connect_from(
    from: &str,
    proxy: std::net::SocketAddr,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let cfg = crate::support::client_config(proxy, "app", None, "postgres");
    let (client, conn) = cfg.connect_raw(tcp, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_client_slot() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}max_connections_per_address = 2\n")).await;
    let addr = proxy.local_addr();
    let first = connect_from("127.0.0.1", addr).await.unwrap();
    let _second = connect_from("127.0.0.1", addr).await.unwrap();
    let err = connect_from("127.0.0.1", addr).await.expect_err("a third from one address is refused");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(crate::support::message(&err).contains("too many connections from 127.0.0.1"), "{err}");
    let other = connect_from("127.0.0.2", addr).await.expect("another address still gets in");
    assert_eq!(crate::support::scalar(&other, "select 1").await.unwrap(), "1");
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = connect_from("127.0.0.1", addr).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = again.expect("a closed connection frees its address's slot");
    assert_eq!(crate::support::scalar(&again, "select 2").await.unwrap(), "2");
}
