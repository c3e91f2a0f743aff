//! Faults: clients that vanish at every step of the extended protocol, and writers that keep
//! writing while servers fail. After each fault the proxy serves everyone else, no pooled server
//! connection keeps anything of the vanished client, and every acknowledged write is there.

use crate::harness::pg::{PgCluster, PgOptions};
use crate::raw::RawClient;
use crate::support::{connect, scalar, start_proxy};

/// The messages of one extended-protocol insert, in order; a client vanishes after sending the
/// first `k` of them.
const STEPS: [&str; 6] = ["parse", "bind", "describe", "execute", "flush", "sync"];

fn send_step(c: &mut RawClient, step: &str, id: i32) {
    match step {
        "parse" => c.parse("v", "insert into vanish values ($1::int) returning n"),
        "bind" => c.bind_text("", "v", &[&id.to_string()]),
        "describe" => c.describe_statement("v"),
        "execute" => c.execute(""),
        "flush" => c.send(b'H', &[]),
        "sync" => c.send(b'S', &[]),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_at_any_step_of_the_extended_protocol_leaves_nothing() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table vanish (n int); grant all on vanish to app");
    // One server for everyone: whatever a vanished client left on it, the next one would see.
    let proxy = start_proxy(&pg, "[proxy]\nauth = \"trust\"\n[pool]\nsize = 1\n").await;
    let addr = proxy.local_addr();
    let bystander = connect(addr, "app", None, "postgres").await;
    let mut id = 0;
    for explicit in [false, true] {
        for k in 0..=STEPS.len() {
            for read_first in [false, true] {
                if read_first && k < 5 {
                    continue; // nothing to read before a Flush
                }
                id += 1;
                let vanished = tokio::task::spawn_blocking(move || {
                    let mut c = RawClient::login(addr, "app", "postgres");
                    if explicit {
                        c.query("begin");
                        c.until(b'Z');
                    }
                    for step in &STEPS[..k] {
                        send_step(&mut c, step, id);
                    }
                    if read_first {
                        // The insert ran and its row came back; the client goes before Sync's answer.
                        c.until(b'D');
                    }
                    drop(c);
                });
                vanished.await.unwrap();
                // The next client gets the same server connection once the proxy has cleaned up.
                let next = connect(addr, "app", None, "postgres").await;
                let rows = scalar(&next, &format!("select count(*) from vanish where n = {id}")).await.unwrap();
                let committed_by_sync = !explicit && k == STEPS.len();
                let expected = if committed_by_sync { ["0", "1"].as_slice() } else { ["0"].as_slice() };
                let case = format!("explicit={explicit} after {:?} read_first={read_first}", &STEPS[..k]);
                assert!(expected.contains(&rows.as_str()), "{case}: {rows} rows of an unacknowledged insert");
                let open =
                    scalar(&next, "select count(*) from pg_stat_activity where state like 'idle in transaction%'");
                assert_eq!(open.await.unwrap(), "0", "{case}: a transaction was left open");
                // The vanished client's statement name is free again for the next client.
                let fresh = tokio::task::spawn_blocking(move || {
                    let mut c = RawClient::login(addr, "app", "postgres");
                    c.parse("v", "select 1");
                    c.send(b'S', &[]);
                    c.until(b'Z')
                });
                assert_eq!(fresh.await.unwrap(), vec![b'1', b'Z'], "{case}");
                assert_eq!(scalar(&bystander, "select 'still served'").await.unwrap(), "still served", "{case}");
            }
        }
    }
    // Nothing that was not acknowledged is there twice.
    let twice =
        pg.psql("postgres", "postgres", "select count(*) from (select n from vanish group by n having count(*) > 1) d");
    assert_eq!(twice, "0");
}

/// What writers saw of their inserts: acknowledged, or failed with an unknown outcome.
#[derive(Default)]
struct Ledger {
    acked: Vec<(i32, i32)>,
    unknown: Vec<(i32, i32)>,
    errors: Vec<String>,
}

/// Starts `writers` clients inserting `(writer, seq)` into `ledger` through the proxy, one
/// autocommit insert at a time, until `stop`; a client whose connection closes reconnects.
fn start_writers(
    addr: std::net::SocketAddr,
    writers: i32,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Ledger>> {
    (0..writers)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ledger = Ledger::default();
                let mut client = None;
                for seq in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let c = match client.take().filter(|c: &tokio_postgres::Client| !c.is_closed()) {
                        Some(c) => c,
                        None => match crate::support::try_connect(addr, "postgres", None, "postgres").await {
                            Ok(c) => c,
                            Err(e) => {
                                ledger.errors.push(format!("connect: {e}"));
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                                continue;
                            }
                        },
                    };
                    match c.simple_query(&format!("insert into ledger values ({w}, {seq})")).await {
                        Ok(_) => ledger.acked.push((w, seq)),
                        Err(e) => {
                            ledger.unknown.push((w, seq));
                            ledger.errors.push(crate::support::sqlstate(&e));
                        }
                    }
                    client = Some(c);
                }
                ledger
            })
        })
        .collect()
}

/// Stops the writers and checks the database: every acknowledged insert is there once, no
/// insert is there twice, and every error was a lost connection (class 08) or a server going
/// away (57P01..57P03).
async fn check_ledger(
    stop: &std::sync::atomic::AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Ledger>>,
    db: &PgCluster,
) -> (usize, usize) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Ledger::default();
    for w in writers {
        let l = w.await.unwrap();
        all.acked.extend(l.acked);
        all.unknown.extend(l.unknown);
        all.errors.extend(l.errors);
    }
    let odd: Vec<&String> = all
        .errors
        .iter()
        .filter(|e| !(e.starts_with("08") || e.starts_with("57P") || e.starts_with("connect")))
        .collect();
    assert!(odd.is_empty(), "errors other than lost connections: {odd:?}");
    let rows = db.psql("postgres", "postgres", "select w || ',' || n || ',' || count(*) from ledger group by w, n");
    let mut present = std::collections::HashMap::new();
    for line in rows.lines() {
        let v: Vec<i32> = line.split(',').map(|x| x.parse().unwrap()).collect();
        present.insert((v[0], v[1]), v[2]);
    }
    let lost: Vec<_> = all.acked.iter().filter(|k| !present.contains_key(k)).collect();
    assert!(lost.is_empty(), "{} acknowledged inserts lost: {lost:?}", lost.len());
    let twice: Vec<_> = present.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "inserts present more than once: {twice:?}");
    let acked: std::collections::HashSet<_> = all.acked.iter().collect();
    let strangers: Vec<_> = present.keys().filter(|k| !acked.contains(k) && !all.unknown.contains(k)).collect();
    assert!(strangers.is_empty(), "rows nobody wrote: {strangers:?}");
    (all.acked.len(), all.unknown.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_severed_server_connections() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table ledger (w int, n int)");
    let relay = crate::support::Severable::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let proxy = crate::support::start_proxy_url(
        &format!("postgres://postgres@{}", relay.addr),
        "[proxy]\nauth = \"trust\"\n[pool]\nsize = 4\n",
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(proxy.local_addr(), 6, &stop);
    for _ in 0..15 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        relay.sever();
    }
    // After the last cut the proxy serves every writer again.
    let probe = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    assert_eq!(scalar(&probe, "select 'back'").await.unwrap(), "back");
    let (acked, unknown) = check_ledger(&stop, writers, &pg).await;
    eprintln!("severed 15 times: {acked} inserts acknowledged, {unknown} with an unknown outcome, 0 lost");
    assert!(acked > 100 && unknown > 0, "the faults did not hit the writers ({acked} acked, {unknown} unknown)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_primary_failover_with_synchronous_replication() {
    // The primary acknowledges a commit only once the standby has it, so killing the primary
    // can lose nothing that was acknowledged, whatever the proxy does not do.
    let sync = vec!["synchronous_commit = on".to_owned(), "synchronous_standby_names = '*'".to_owned()];
    let mut primary = PgCluster::start(PgOptions { extra_conf: sync, ..PgOptions::default() });
    let replica = primary.start_replica();
    // Once promoted, the replica has no standby of its own to wait for.
    let conf = replica.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nsynchronous_standby_names = ''\n");
    std::fs::write(&conf, text).unwrap();
    replica.psql("postgres", "postgres", "select pg_reload_conf()");
    primary.psql("postgres", "postgres", "create table ledger (w int, n int)");
    assert_eq!(primary.psql("postgres", "postgres", "select sync_state from pg_stat_replication"), "sync");
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[pool]\nsize = 8\n[routing]\nhealth_interval = \"100ms\"\nfailover_timeout = \"20s\"\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\nreplicas = [\"postgres://127.0.0.1:{}\"]\n",
        primary.port(),
        replica.port()
    );
    let proxy = start_proxy(&primary, &toml).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = start_writers(proxy.local_addr(), 6, &stop);
    let before = crate::support::eventually(std::time::Duration::from_secs(10), || {
        primary.psql("postgres", "postgres", "select count(*) from ledger").parse::<u32>().unwrap() >= 200
    })
    .await;
    assert!(before, "the writers never got going");
    tokio::task::block_in_place(|| {
        primary.stop();
        replica.promote();
    });
    // Writes go on, on the promoted replica.
    let resumed = crate::support::eventually(std::time::Duration::from_secs(20), || {
        replica.psql("postgres", "postgres", "select count(*) from ledger where n > 0").parse::<u32>().unwrap() > 0
            && replica.psql("postgres", "postgres", "select pg_is_in_recovery()") == "f"
    })
    .await;
    assert!(resumed);
    let after_promotion = replica.psql("postgres", "postgres", "select count(*) from ledger");
    let more = crate::support::eventually(std::time::Duration::from_secs(20), || {
        replica.psql("postgres", "postgres", "select count(*) from ledger") != after_promotion
    })
    .await;
    assert!(more, "no write reached the promoted replica");
    let (acked, unknown) = check_ledger(&stop, writers, &replica).await;
    eprintln!("primary killed: {acked} inserts acknowledged, {unknown} with an unknown outcome, 0 lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_times_out_and_nobody_else_waits() {
    let pg = PgCluster::start(PgOptions::default());
    let relay = crate::support::Severable::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    // Database `postgres` reaches the server through the relay; `direct` reaches it directly.
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[pool]\nquery_timeout = \"1s\"\nconnect_timeout = \"1s\"\n\
         [clusters.direct]\nprimary = \"postgres://127.0.0.1:{}\"\n\
         [databases.direct]\ncluster = \"direct\"\ndbname = \"postgres\"\n",
        pg.port()
    );
    let proxy = crate::support::start_proxy_url(&format!("postgres://{}", relay.addr), &toml).await;
    let addr = proxy.local_addr();
    let stalled = connect(addr, "app", None, "postgres").await;
    let other = connect(addr, "app", None, "direct").await;
    assert_eq!(scalar(&stalled, "select 1").await.unwrap(), "1");
    // pool.query_timeout counts the server's silence: a statement shorter than it is not cut.
    assert_eq!(scalar(&stalled, "select pg_sleep(0.3)::text").await.unwrap(), "");

    relay.stall();
    let started = std::time::Instant::now();
    let query = tokio::spawn(async move {
        let r = scalar(&stalled, "select 2").await;
        (r, stalled)
    });
    // Meanwhile everyone on another server is served at once.
    for i in 0..20 {
        assert_eq!(scalar(&other, &format!("select {i}")).await.unwrap(), i.to_string());
    }
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(20), query).await;
    let (answer, stalled) = waiting.expect("the client still waits on a silent server").unwrap();
    let waited = started.elapsed();
    let err = answer.expect_err("a silent server cannot answer");
    assert!(crate::support::sqlstate(&err).starts_with("08"), "{err}");
    assert!(format!("{err:?}").contains("pool.query_timeout"), "{err:?}");
    assert!(waited < std::time::Duration::from_secs(5), "the client waited {waited:?}");
    // A new server connection cannot log in through the partition either: connect_timeout.
    let started = std::time::Instant::now();
    let fresh = crate::support::try_connect(addr, "app", None, "postgres").await;
    let refused = match fresh {
        Err(e) => e,
        Ok(c) => scalar(&c, "select 3").await.expect_err("no server can be reached"),
    };
    assert!(crate::support::sqlstate(&refused).starts_with("08"), "{refused}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "waited {:?}", started.elapsed());

    // The network heals: the same client goes on, on a new server connection.
    relay.resume();
    assert_eq!(scalar(&stalled, "select 4").await.unwrap(), "4");
    assert_eq!(scalar(&other, "select 5").await.unwrap(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_reset_mid_result_fails_only_that_request() {
    let pg = PgCluster::start(PgOptions::default());
    let relay = crate::support::Severable::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let proxy = crate::support::start_proxy_url(
        &format!("postgres://{}", relay.addr),
        "[proxy]\nauth = \"trust\"\n[pool]\nsize = 2\n",
    )
    .await;
    let addr = proxy.local_addr();
    let bystander = connect(addr, "app", None, "postgres").await;
    let rows_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The reader says when the first thousand rows are in: the cut comes mid-result.
    let (got_rows, cut) = tokio::sync::oneshot::channel::<()>();
    let seen = rows_seen.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut c = RawClient::login(addr, "app", "postgres");
        c.query("select repeat('r', 1000) from generate_series(1, 5000000)");
        let mut tags = Vec::new();
        let mut got_rows = Some(got_rows);
        loop {
            let (t, body) = c.read();
            if t == b'D' {
                if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1000 {
                    got_rows.take().unwrap().send(()).unwrap();
                }
                continue;
            }
            tags.push((t, String::from_utf8_lossy(&body).into_owned()));
            if t == b'Z' {
                break;
            }
        }
        // The same client goes on.
        c.query("select 'after'");
        let after = c.until(b'Z');
        (tags, after)
    });
    cut.await.unwrap();
    relay.sever();
    let (tags, after) = reader.await.unwrap();
    let error = tags.iter().find(|(t, _)| *t == b'E').expect("an ErrorResponse after the partial result");
    assert!(error.1.contains("08006"), "{tags:?}");
    assert!(!tags.iter().any(|(t, _)| *t == b'C'), "the result must not look complete: {tags:?}");
    assert!(rows_seen.load(std::sync::atomic::Ordering::Relaxed) < 5_000_000);
    assert_eq!(after, vec![b'T', b'D', b'C', b'Z']);
    assert_eq!(scalar(&bystander, "select 'unaffected'").await.unwrap(), "unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_mid_result_costs_the_reader_nothing() {
    let primary = PgCluster::start(PgOptions::default());
    let replica = primary.start_replica();
    let relay = crate::support::Severable::start(format!("127.0.0.1:{}", replica.port()).parse().unwrap()).await;
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[routing]\nhealth_interval = \"100ms\"\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\nreplicas = [\"postgres://{}\"]\n",
        primary.port(),
        relay.addr
    );
    let proxy = start_proxy(&primary, &toml).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let read = "select g, repeat('r', 20) from generate_series(1, 500) g";
    // Warm: the read runs on the replica (a server connection through the relay).
    until_on_replica(&c, replica.port()).await;
    // The replica's answer (about 20 KB) is cut after 3,000 bytes: the proxy has not let any of
    // it reach the client, so it runs the read again elsewhere and the client sees one whole
    // result.
    relay.cut_after(3000);
    let rows = c.simple_query(read).await.expect("the read runs again elsewhere");
    let data: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), 500);
    assert_eq!(data.first().map(String::as_str), Some("1"));
    assert_eq!(data.last().map(String::as_str), Some("500"));

    // Answers too big to hold stream as before: rows of 20 KB and 50 KB in turn (a held 20 KB
    // plus a whole 50 KB row passes the high-water mark), rows just under the size held whole,
    // and rows streamed in pieces. The replica is back from its ban first.
    until_on_replica(&c, replica.port()).await;
    for (size, rows) in [("20000 + 30000 * (g % 2)", 6), ("60000", 6), ("200000", 3)] {
        let sql = format!("select repeat('x', {size}) || g from generate_series(1, {rows}) g");
        let big = tokio::time::timeout(std::time::Duration::from_secs(20), c.simple_query(&sql));
        let got = big.await.expect("a big replica read never stalls").unwrap();
        let n = got.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
        assert_eq!(n, rows, "{size}");
    }
}

/// Waits until `c`'s reads land on the replica listening on `port` (after a ban, say).
async fn until_on_replica(c: &tokio_postgres::Client, port: u16) {
    for _ in 0..400 {
        if scalar(c, "select inet_server_port()::text").await.unwrap() == port.to_string() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("reads never reached the replica");
}
