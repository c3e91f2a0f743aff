//! Protocol pass-through: extended protocol, pipelining, COPY, large rows, bad input.

use std::io::{Read, Write};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::Type;

use crate::harness::pg::{try_psql, PgCluster, PgOptions};
use crate::support::{connect, scalar, start_proxy};

const TRUST: &str = "[proxy]\nauth = \"trust\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_unnamed_statements_across_clients() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let mut tasks = Vec::new();
    for c in 0..4i32 {
        let addr = proxy.local_addr();
        tasks.push(tokio::spawn(async move {
            let client = connect(addr, "app", None, "postgres").await;
            for i in 0..50i32 {
                let rows = client
                    .query_typed("select $1::int4 * 1000 + $2::int4", &[(&c, Type::INT4), (&i, Type::INT4)])
                    .await
                    .unwrap();
                assert_eq!(rows[0].get::<_, i32>(0), c * 1000 + i);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_client() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 2\n")).await;
    let client = connect(proxy.local_addr(), "app", None, "postgres").await;
    // tokio-postgres pipelines concurrent requests on one connection: many Syncs in flight.
    let futs = (0..200i32).map(|i| {
        let client = &client;
        async move { client.query_typed("select $1::int4", &[(&i, Type::INT4)]).await.unwrap()[0].get::<_, i32>(0) }
    });
    let got: Vec<i32> = futures_util::future::join_all(futs).await;
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("app", "app_db", "create table items(id int, name text)");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let client = connect(proxy.local_addr(), "app", None, "app_db").await;
    let sink = client.copy_in("copy items from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    for chunk in data.as_bytes().chunks(7_000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 10_000);
    let out: Vec<Bytes> = client.copy_out("copy items to stdout").await.unwrap().try_collect().await.unwrap();
    let text: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(String::from_utf8(text).unwrap(), data);
    // COPY through psql (simple protocol) too.
    let port = proxy.local_addr().port();
    let n = tokio::task::spawn_blocking(move || {
        try_psql(
            &format!("host=127.0.0.1 port={port} user=app dbname=app_db"),
            "\\copy (select * from items where id < 100) to '/dev/null'\nselect count(*) from items",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(n.ends_with("10000"), "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_and_results_stream_through() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let client = connect(proxy.local_addr(), "app", None, "postgres").await;
    // One 20 MB DataRow: larger than the proxy ever holds whole.
    let len = scalar(&client, "select length(repeat('x', 20000000))").await.unwrap();
    assert_eq!(len, "20000000");
    let big = client.simple_query("select repeat('y', 20000000)").await.unwrap();
    let row = big.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().len()),
        _ => None,
    });
    assert_eq!(row, Some(20_000_000));
    // Many rows.
    let stream = client.query_raw("select generate_series(1, 200000)", std::iter::empty::<i32>()).await;
    // query_raw prepares a named statement; with one client and one server that is fine here.
    let n = stream.unwrap().count().await;
    assert_eq!(n, 200_000);
}

fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_get_errors() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let addr = proxy.local_addr();
    let answers = tokio::task::spawn_blocking(move || {
        vec![
            // length field smaller than the header
            raw_exchange(addr, &[0, 0, 0, 3, 0, 0, 0, 0]),
            // protocol 2.0
            raw_exchange(addr, &[0, 0, 0, 9, 0, 2, 0, 0, 0]),
            // parameters without the final terminator
            raw_exchange(addr, &[0, 0, 0, 14, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'x']),
            // absurd length
            raw_exchange(addr, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
            // one byte over PostgreSQL's 10,000-byte startup packet limit: refused at once
            raw_exchange(addr, &[0, 0, 0x27, 0x11, 0, 3, 0, 0]),
        ]
    })
    .await
    .unwrap();
    let codes = ["08P01", "0A000", "08P01", "08P01", "08P01"];
    for (a, code) in answers.iter().zip(codes) {
        assert_eq!(a.first(), Some(&b'E'), "{a:?}");
        assert!(String::from_utf8_lossy(a).contains(code), "{code}: {}", String::from_utf8_lossy(a));
    }
    // The proxy keeps serving.
    let c = connect(addr, "app", None, "postgres").await;
    assert_eq!(scalar(&c, "select 'ok'").await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_after_login_gets_08p01() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let addr = proxy.local_addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut startup = Vec::new();
        let body = b"\0\x03\0\0user\0app\0database\0postgres\0\0";
        startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        startup.extend_from_slice(body);
        // A Query whose length field says 2 (less than its own 4 bytes).
        startup.extend_from_slice(&[b'Q', 0, 0, 0, 2]);
        raw_exchange(addr, &startup)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01"), "{text}");
    let c = connect(addr, "app", None, "postgres").await;
    assert_eq!(scalar(&c, "select 'still serving'").await.unwrap(), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_keeps_the_server() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let addr = proxy.local_addr();
    let b = connect(addr, "app", None, "postgres").await;
    let mut a = tokio::task::spawn_blocking(move || {
        let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
        // asyncpg's pattern: Parse + Describe + Flush, answers read, Bind/Execute/Sync later.
        a.parse("", "select 41 + 1");
        a.describe_statement("");
        a.send(b'H', b"");
        assert_eq!(a.until(b'T'), vec![b'1', b't', b'T']);
        a
    })
    .await
    .unwrap();
    // Another client must not get the server in between: a simple query would destroy the
    // unnamed statement that A is about to bind.
    let b_query = tokio::spawn(async move { scalar(&b, "select 'b ran'").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!b_query.is_finished(), "the server was handed to B across A's Flush");
    let tags = tokio::task::spawn_blocking(move || {
        a.bind("", "");
        a.execute("");
        a.send(b'S', b"");
        a.until(b'Z')
    })
    .await
    .unwrap();
    assert_eq!(tags, vec![b'2', b'D', b'C', b'Z']);
    assert_eq!(b_query.await.unwrap().unwrap(), "b ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_and_notifications_pass_through() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nmode = \"session\"\n")).await;
    let addr = proxy.local_addr();
    let mut a = tokio::task::spawn_blocking(move || {
        let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
        a.query("do $$ begin raise notice 'hello %', 42; end $$");
        let (t, body) = a.read();
        assert_eq!(t, b'N');
        assert!(String::from_utf8_lossy(&body).contains("hello 42"));
        a.until(b'Z');
        a.query("listen pgweir_chan");
        a.until(b'Z');
        a
    })
    .await
    .unwrap();
    let b = connect(addr, "app", None, "postgres").await;
    b.simple_query("notify pgweir_chan, 'payload-1'").await.unwrap();
    let body = tokio::task::spawn_blocking(move || {
        let (t, body) = a.read();
        assert_eq!(t, b'A', "an asynchronous NotificationResponse");
        body
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("pgweir_chan") && text.contains("payload-1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_the_startup_timeout() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}startup_timeout = \"300ms\"\n")).await;
    let addr = proxy.local_addr();
    let elapsed = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        start.elapsed()
    })
    .await
    .unwrap();
    assert!(elapsed < std::time::Duration::from_secs(3), "closed after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_its_server_not_the_proxy() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let addr = proxy.local_addr();
    let before = crate::support::rss_bytes();
    // About 3 GB of result that the client never reads.
    let sql = "select repeat('x', 1000) from generate_series(1, 3000000)";
    let reader = tokio::task::spawn_blocking(move || {
        let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
        a.query(sql);
        a
    })
    .await
    .unwrap();
    let pg2 = &pg;
    let blocked = crate::support::eventually(std::time::Duration::from_secs(20), || {
        pg2.psql(
            "postgres",
            "postgres",
            "select count(*) from pg_stat_activity where query like 'select repeat(%' and wait_event = 'ClientWrite'",
        ) == "1"
    })
    .await;
    assert!(blocked, "the server should be blocked writing to the proxy");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grown = crate::support::rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "proxy memory grew by {grown} bytes");
    // The client leaves mid-result: its server connection is closed, not returned dirty.
    drop(reader);
    let gone = crate::support::eventually(std::time::Duration::from_secs(10), || {
        pg2.psql("postgres", "postgres", "select count(*) from pg_stat_activity where query like 'select repeat(%'")
            == "0"
    })
    .await;
    assert!(gone, "the abandoned query's server connection must not survive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_small_rows_is_not_buffered() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let addr = proxy.local_addr();
    let before = crate::support::rss_bytes();
    // 256 MiB in 1 KiB rows (each held whole, unlike big rows, which stream): the server
    // produces faster than the client reads, and what the client has not taken must stay in
    // the server's socket.
    let sql = "select repeat('y', 1024) from generate_series(1, 262144)";
    let read =
        tokio::task::spawn_blocking(move || crate::raw::read_slowly(addr, sql, std::time::Duration::from_micros(200)));
    let mut grown = 0;
    while !read.is_finished() {
        grown = grown.max(crate::support::rss_bytes().saturating_sub(before));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(read.await.unwrap() > 256 << 20);
    assert!(grown < 48 << 20, "proxy memory grew by {grown} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_declined_and_cancel_after_ssl_request() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, TRUST).await;
    let addr = proxy.local_addr();
    let key = tokio::task::spawn_blocking(move || {
        // GSSENCRequest is answered 'N' and the same connection goes on to log in.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
        let mut n = [0u8; 1];
        s.read_exact(&mut n).unwrap();
        assert_eq!(&n, b"N");
        let a = crate::raw::RawClient::login(addr, "app", "postgres");
        a.key
    })
    .await
    .unwrap();
    assert!(key.0 > 0, "the pid handed out is positive");
    let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
    let (pid, secret) = a.key;
    a.query("select pg_sleep(8)");
    crate::support::wait_until_running(&pg, "select pg_sleep(8)").await;
    tokio::task::spawn_blocking(move || {
        // libpq 17 style: SSLRequest first (answered 'N' here: no TLS configured), then the
        // CancelRequest on the same connection.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
        let mut n = [0u8; 1];
        s.read_exact(&mut n).unwrap();
        assert_eq!(&n, b"N");
        let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        cancel.extend_from_slice(&pid.to_be_bytes());
        cancel.extend_from_slice(&secret);
        s.write_all(&cancel).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        // RowDescription comes first; then the cancel's error.
        loop {
            let (t, body) = a.read();
            if t == b'E' {
                assert!(String::from_utf8_lossy(&body).contains("57014"));
                break;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_and_application_name_reach_the_server() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create schema other_schema");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let mut cfg = crate::support::client_config(proxy.local_addr(), "app", None, "postgres");
    cfg.options("-c search_path=other_schema,public").application_name("opts-test");
    let (a, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // Another client with other settings shares the single server in between.
    let b = connect(proxy.local_addr(), "app", None, "postgres").await;
    for _ in 0..3 {
        assert_eq!(scalar(&a, "show search_path").await.unwrap(), "other_schema,public", "as PostgreSQL shows it");
        assert_eq!(scalar(&a, "show application_name").await.unwrap(), "opts-test");
        assert_eq!(scalar(&b, "show search_path").await.unwrap(), "\"$user\", public");
        assert_eq!(scalar(&b, "show application_name").await.unwrap(), "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_gets_08p01() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = start_proxy(&pg, &format!("{TRUST}max_message_size = 1000\n")).await;
    let c = connect(proxy.local_addr(), "app", None, "postgres").await;
    let long = format!("select '{}'", "x".repeat(2000));
    let err = c.simple_query(&long).await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&err), "08P01", "{err}");
    let d = connect(proxy.local_addr(), "app", None, "postgres").await;
    assert_eq!(scalar(&d, "select 'fine'").await.unwrap(), "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_sent_with_terminate_still_runs() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table t_term(x int); grant all on t_term to public;");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    let addr = proxy.local_addr();
    tokio::task::spawn_blocking(move || {
        let mut a = crate::raw::RawClient::login(addr, "app", "postgres");
        // One write: a Query and a Terminate. PostgreSQL would run the insert; so must we.
        let mut bytes = vec![b'Q'];
        let sql = b"insert into t_term values (1)\0";
        bytes.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
        bytes.extend_from_slice(sql);
        bytes.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        a.s.write_all(&bytes).unwrap();
        let mut rest = Vec::new();
        let _ = a.s.read_to_end(&mut rest);
    })
    .await
    .unwrap();
    let pg2 = &pg;
    assert!(
        crate::support::eventually(std::time::Duration::from_secs(5), || pg2.psql(
            "postgres",
            "postgres",
            "select count(*) from t_term"
        ) == "1")
        .await
    );
    let c = connect(addr, "app", None, "postgres").await;
    assert_eq!(scalar(&c, "select count(*) from t_term").await.unwrap(), "1", "and the server is reusable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_copy_does_not_poison_the_server() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("app", "app_db", "create table copy_target(x int)");
    let proxy = start_proxy(&pg, &format!("{TRUST}[pool]\nsize = 1\n")).await;
    {
        let a = connect(proxy.local_addr(), "app", None, "app_db").await;
        let sink = a.copy_in::<_, Bytes>("copy copy_target from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
        // The client vanishes mid-COPY (no CopyDone, no Sync).
    }
    let b = connect(proxy.local_addr(), "app", None, "app_db").await;
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), scalar(&b, "select count(*) from copy_target"))
        .await
        .expect("the next client must not hang on a server stuck in COPY")
        .unwrap();
    assert_eq!(n, "0");
}
