//! Read/write splitting: reads go to replicas, writes to the primary, and a session always
//! reads its own writes even from replicas that apply WAL late.

use std::process::Command;
use std::time::Duration;

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::{connect, scalar, start_proxy};

fn xact_commits(pg: &PgCluster) -> i64 {
    pg.psql("postgres", "postgres", "select xact_commit from pg_stat_database where datname = 'postgres'")
        .parse()
        .unwrap()
}

fn config(replicas: &[&PgCluster]) -> String {
    let urls: Vec<String> = replicas.iter().map(|r| format!("\"postgres://127.0.0.1:{}\"", r.port())).collect();
    format!(
        "[proxy]\nauth = \"trust\"\n[pool]\nsize = 8\n[routing]\nhealth_interval = \"100ms\"\nmax_lag_ms = 2000\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:1\"\nreplicas = [{}]\n",
        urls.join(", ")
    )
}

/// `pgbench -i -s 1` directly on the primary.
fn pgbench_init(primary: &PgCluster) {
    let port = primary.port().to_string();
    let init = Command::new(primary.bin("pgbench"))
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
}

/// Waits until every replica has `table`, created on the primary.
async fn wait_replicated(replicas: &[&PgCluster], table: &str) {
    let sql = format!("select count(*) from pg_tables where tablename = '{table}'");
    let ok = crate::support::eventually(Duration::from_secs(10), || {
        replicas.iter().all(|r| r.psql("postgres", "postgres", &sql) == "1")
    })
    .await;
    assert!(ok, "{table} never reached the replicas");
}

/// Which server answered: its port.
async fn served_by(c: &tokio_postgres::Client) -> u16 {
    scalar(c, "select inet_server_port()").await.unwrap().parse().unwrap()
}

/// Waits until the proxy's monitor sees a replica as usable (a read lands on one).
async fn wait_for_replicas(addr: std::net::SocketAddr, primary: u16) {
    let c = connect(addr, "postgres", None, "postgres").await;
    for _ in 0..100 {
        if served_by(&c).await != primary {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reads never reached a replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_lands_on_replicas() {
    let primary = PgCluster::start(PgOptions::default());
    let (r1, r2) = (primary.start_replica(), primary.start_replica());
    let proxy = start_proxy(&primary, &config(&[&r1, &r2])).await;
    let port = proxy.local_addr().port().to_string();
    pgbench_init(&primary);
    // The replicas must have the tables before reads go there.
    wait_replicated(&[&r1, &r2], "pgbench_accounts").await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let before: Vec<i64> = [&primary, &r1, &r2].iter().map(|p| xact_commits(p)).collect();
    let out = tokio::task::spawn_blocking({
        let bin = primary.bin("pgbench");
        move || {
            Command::new(bin)
                .args([
                    "-n",
                    "-S",
                    "-c",
                    "16",
                    "-j",
                    "2",
                    "-T",
                    "5",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "postgres",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("number of failed transactions: 0 (0.000%)"), "{text}");
    let after: Vec<i64> = [&primary, &r1, &r2].iter().map(|p| xact_commits(p)).collect();
    let d: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let on_replicas = (d[1] + d[2]) as f64 / (d[0] + d[1] + d[2]) as f64;
    assert!(on_replicas >= 0.9, "only {:.1}% on replicas ({d:?})", on_replicas * 100.0);
    assert!(d[1] > 0 && d[2] > 0, "both replicas take reads ({d:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_from_delayed_replicas() {
    let primary = PgCluster::start(PgOptions::default());
    let mut replicas = vec![primary.start_replica(), primary.start_replica()];
    for r in &mut replicas {
        let conf = r.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nrecovery_min_apply_delay = '500ms'\n");
        std::fs::write(&conf, text).unwrap();
        r.restart();
    }
    primary.psql("postgres", "postgres", "create table ryw(id int primary key)");
    let refs: Vec<&PgCluster> = replicas.iter().collect();
    let proxy = start_proxy(&primary, &config(&refs)).await;
    wait_replicated(&[&replicas[0], &replicas[1]], "ryw").await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let writer = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let reader = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    let mut reader_on_replica = 0;
    for i in 0..1000 {
        writer.simple_query(&format!("insert into ryw values ({i})")).await.unwrap();
        let n = scalar(&writer, &format!("select count(*) from ryw where id = {i}")).await.unwrap();
        assert_eq!(n, "1", "the session must see its own insert {i}");
        if served_by(&reader).await != primary.port() {
            reader_on_replica += 1;
        }
    }
    assert!(reader_on_replica >= 900, "a session that never writes kept {reader_on_replica}/1000 reads on replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_hints_and_cross_connection_read_your_writes() {
    let primary = PgCluster::start(PgOptions::default());
    let mut replica = primary.start_replica();
    {
        let conf = replica.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nrecovery_min_apply_delay = '2s'\n");
        std::fs::write(&conf, text).unwrap();
        replica.restart();
    }
    let proxy = start_proxy(&primary, &config(&[&replica])).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    // Session-wide override, answered by the proxy itself.
    c.simple_query("SET pgweir.route = primary").await.unwrap();
    assert_eq!(scalar(&c, "show pgweir.route").await.unwrap(), "primary");
    assert_eq!(served_by(&c).await, primary.port());
    c.simple_query("SET pgweir.route = auto").await.unwrap();
    assert_ne!(served_by(&c).await, primary.port());
    // Inside a transaction the proxy's settings are refused, not silently ignored.
    c.simple_query("BEGIN").await.unwrap();
    let err = c.simple_query("SET pgweir.route = replica").await.unwrap_err();
    assert_eq!(crate::support::sqlstate(&err), "25001", "{err}");
    c.simple_query("COMMIT").await.unwrap();
    // A comment hint for one statement.
    assert_eq!(
        scalar(&c, "/* pgweir: primary */ select inet_server_port()").await.unwrap(),
        primary.port().to_string()
    );
    // Write on one connection, hand the position to another (an application's other pool).
    let w = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    w.simple_query("create table handoff(x int); insert into handoff values (1)").await.unwrap();
    let lsn = scalar(&w, "show pgweir.lsn").await.unwrap();
    assert_ne!(lsn, "0/0");
    let r = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    r.simple_query(&format!("SET pgweir.min_lsn = '{lsn}'")).await.unwrap();
    // The replica applies 2 s late, so only the primary can answer this read now.
    assert_eq!(scalar(&r, "select count(*) from handoff").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_skipped() {
    let primary = PgCluster::start(PgOptions::default());
    let (mut r1, r2) = (primary.start_replica(), primary.start_replica());
    let proxy = start_proxy(&primary, &config(&[&r1, &r2])).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    for _ in 0..20 {
        served_by(&c).await;
    }
    let dead = r1.port();
    r1.stop();
    // Every read still succeeds: a replica that cannot be reached is taken out at once.
    for _ in 0..50 {
        let port = served_by(&c).await;
        assert_ne!(port, dead);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_during_pgbench_costs_no_transactions() {
    let primary = PgCluster::start(PgOptions::default());
    let (mut r1, r2) = (primary.start_replica(), primary.start_replica());
    pgbench_init(&primary);
    wait_replicated(&[&r1, &r2], "pgbench_accounts").await;
    let proxy = start_proxy(&primary, &config(&[&r1, &r2])).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let port = proxy.local_addr().port().to_string();
    let bench = tokio::task::spawn_blocking({
        let bin = primary.bin("pgbench");
        move || {
            Command::new(bin)
                .args([
                    "-n",
                    "-S",
                    "-c",
                    "8",
                    "-j",
                    "2",
                    "-T",
                    "5",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "postgres",
                ])
                .output()
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A fast shutdown terminates the replica's sessions mid-query, then refuses connections.
    tokio::task::block_in_place(|| r1.stop());
    let out = bench.await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0 (0.000%)"), "{text}");
    assert!(!text.contains("aborted"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_replica_keeps_every_client() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let mut primary = PgCluster::start(PgOptions::default());
    let replica = primary.start_replica();
    primary.psql("postgres", "postgres", "create table fo(id serial primary key, w int)");
    wait_replicated(&[&replica], "fo").await;
    let toml = config(&[&replica]).replace("[routing]\n", "[routing]\nfailover_timeout = \"10s\"\n");
    let proxy = start_proxy(&primary, &toml).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let idle = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    idle.simple_query("select 1").await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let successes: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8usize {
        let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
        let (stop, successes) = (stop.clone(), successes.clone());
        writers.push(tokio::spawn(async move {
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                match c.simple_query(&format!("insert into fo(w) values ({w})")).await {
                    Ok(_) => successes.lock().unwrap().push((w, Instant::now())),
                    Err(e) => {
                        errors += 1;
                        assert!(crate::support::sqlstate(&e).starts_with("08"), "writer {w}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| {
        replica.promote();
        primary.stop();
    });
    let promoted = Instant::now();
    let everyone_back = crate::support::eventually(Duration::from_secs(5), || {
        let s = successes.lock().unwrap();
        (0..8).all(|w| s.iter().any(|(x, t)| *x == w && *t > promoted))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(everyone_back, "not every writer resumed on its own connection");
    let gap = {
        let s = successes.lock().unwrap();
        (0..8)
            .map(|w| s.iter().filter(|(x, t)| *x == w && *t > promoted).map(|(_, t)| *t).min().unwrap() - promoted)
            .max()
            .unwrap()
    };
    eprintln!("failover gap: writes resumed {gap:?} after promotion");
    assert!(gap < Duration::from_secs(2), "writes resumed only after {gap:?}");
    // A client idle through it all just works, on the new primary.
    idle.simple_query("insert into fo(w) values (99)").await.unwrap();
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    c.simple_query("SET pgweir.route = primary").await.unwrap();
    assert_eq!(served_by(&c).await, replica.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_begin_lets_read_transactions_use_replicas() {
    let primary = PgCluster::start(PgOptions::default());
    let replica = primary.start_replica();
    primary.psql("postgres", "postgres", "create table dt(x int)");
    wait_replicated(&[&replica], "dt").await;
    let toml = config(&[&replica]).replace("[routing]\n", "[routing]\ndefer_begin = true\n");
    let proxy = start_proxy(&primary, &toml).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    // A transaction whose first statement reads runs on a replica, BEGIN included.
    c.simple_query("BEGIN").await.unwrap();
    assert_ne!(served_by(&c).await, primary.port());
    assert_eq!(scalar(&c, "select count(*) from dt").await.unwrap(), "0");
    c.simple_query("COMMIT").await.unwrap();
    // One that starts with a write runs on the primary, and commits.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("insert into dt values (1)").await.unwrap();
    assert_eq!(served_by(&c).await, primary.port());
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(primary.psql("postgres", "postgres", "select count(*) from dt"), "1");
    // An empty transaction never needs a server; a rolled-back one leaves nothing.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("insert into dt values (2)").await.unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(primary.psql("postgres", "postgres", "select count(*) from dt"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_while_the_primary_still_runs_takes_the_writes() {
    let primary = PgCluster::start(PgOptions::default());
    let replica = primary.start_replica();
    let proxy = start_proxy(&primary, &config(&[&replica])).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    c.simple_query("SET pgweir.route = primary").await.unwrap();
    assert_eq!(served_by(&c).await, primary.port());
    tokio::task::block_in_place(|| replica.promote());
    // The old primary still answers, but the promoted member is on a newer timeline.
    let mut moved = false;
    for _ in 0..40 {
        if served_by(&c).await == replica.port() {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "writes kept going to the old primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_and_replica_reads_use_the_clusters_tls() {
    let primary = PgCluster::start(PgOptions { ssl: true, ..PgOptions::default() });
    let replica = primary.start_replica();
    let ca = primary.ca_path().unwrap();
    let toml = config(&[&replica]).replace(
        "primary = \"postgres://127.0.0.1:1\"\n",
        &format!("primary = \"postgres://127.0.0.1:1\"\ntls = \"verify-full\"\nca_file = \"{}\"\n", ca.display()),
    );
    let proxy = start_proxy(&primary, &toml).await;
    wait_for_replicas(proxy.local_addr(), primary.port()).await;
    let c = connect(proxy.local_addr(), "postgres", None, "postgres").await;
    assert_eq!(scalar(&c, "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await.unwrap(), "true");
    let monitor_ssl = replica.psql(
        "postgres",
        "postgres",
        "select bool_and(s.ssl)::text from pg_stat_activity a join pg_stat_ssl s using (pid) where a.usename = 'postgres' and a.pid <> pg_backend_pid() and a.backend_type = 'client backend'",
    );
    assert_eq!(monitor_ssl, "true", "every proxy connection to the replica is encrypted");
}
