//! Long runs, opt-in (`#[ignore]`): `cargo nextest run --run-ignored only -E 'test(long_)'`.
//! Their last results are in the README (Hardening). Each runs the real binary, so its memory
//! is measured apart from the clients'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drain::{spawn_pgweir, wait_listening, write_config};
use crate::harness::free_port;
use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::Running;

/// A `/proc/PID/status` field in bytes (VmRSS, VmHWM).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).unwrap_or(0) * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: a gigabyte through a slow reader"]
async fn long_slow_client_reads_a_gigabyte_in_bounded_memory() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = write_config(dir.path(), "pgweir.toml", &format!("listen = \"127.0.0.1:{port}\"\n"), "", &pg);
    let proxy = Running(spawn_pgweir(&toml));
    let pid = proxy.0.id();
    let addr = wait_listening(port).await;
    let started = Instant::now();
    // 1 GiB in 1 MiB rows (streamed in pieces) and then in 1 KiB rows, read 64 KiB at a time
    // with a pause after each read: the server produces far faster than the client reads.
    let read = tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        for sql in [
            "select repeat('x', 1048576) from generate_series(1, 1024)",
            "select repeat('y', 1024) from generate_series(1, 1048576)",
        ] {
            total += crate::raw::read_slowly(addr, sql, Duration::from_micros(500));
        }
        total
    });
    let mut peak = 0;
    while !read.is_finished() {
        peak = peak.max(status_bytes(pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = read.await.unwrap();
    let hwm = status_bytes(pid, "VmHWM");
    eprintln!(
        "slow reader: {:.2} GiB in {:.1?}; proxy RSS peak {:.1} MiB (VmHWM {:.1} MiB)",
        total as f64 / (1u64 << 30) as f64,
        started.elapsed(),
        peak as f64 / 1048576.0,
        hwm as f64 / 1048576.0
    );
    assert!(total > 2 << 30, "both results arrived whole ({total} bytes)");
    assert!(hwm < 64 << 20, "the proxy buffered: VmHWM {hwm} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 10,000 clients for 60 s"]
async fn long_ten_thousand_clients_through_a_pool_of_twenty() {
    const CLIENTS: usize = 10_000;
    let run_for =
        Duration::from_secs(std::env::var("PGWEIR_LONG_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    // The test process holds 10,000 client sockets; the proxy raises its own limit.
    let (before, after) = pgweir::net::raise_nofile().unwrap();
    assert!(after >= CLIENTS as u64 + 1000, "open-file limit {after} (was {before}) is too low");
    let pg = PgCluster::start(PgOptions::default());
    pg.psql(
        "postgres",
        "postgres",
        "create table acct (id int primary key, n bigint not null default 0);
         insert into acct select g from generate_series(0, 99) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\n");
    let pool = "[pool]\nsize = 20\nmax_client_connections = 11000\nwait_timeout = \"30s\"\n";
    let toml = write_config(dir.path(), "pgweir.toml", &listen, pool, &pg);
    let proxy = Running(spawn_pgweir(&toml));
    let pid = proxy.0.id();
    let addr = wait_listening(port).await;
    let rss_at_rest = status_bytes(pid, "VmRSS");

    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let (committed, wait_timeouts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let all_in = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (connecting, committed, wait_timeouts) = (connecting.clone(), committed.clone(), wait_timeouts.clone());
        let (errors, all_in) = (errors.clone(), all_in.clone());
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.unwrap();
            let c = crate::support::try_connect(addr, "postgres", None, "postgres").await;
            drop(permit);
            all_in.wait().await;
            let c = match c {
                Ok(c) => c,
                Err(e) => return errors.lock().unwrap().push(format!("connect: {e}")),
            };
            let end = Instant::now() + run_for;
            let sql = format!("begin; update acct set n = n + 1 where id = {}; commit", i % 100);
            while Instant::now() < end {
                match c.batch_execute(&sql).await {
                    Ok(()) => committed.fetch_add(1, Ordering::Relaxed),
                    Err(e) if crate::support::sqlstate(&e) == "53300" => wait_timeouts.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return errors.lock().unwrap().push(e.to_string()),
                };
            }
        }));
    }
    all_in.wait().await;
    let started = Instant::now();
    let rss_connected = status_bytes(pid, "VmRSS");
    let mut peak = rss_connected;
    for t in tasks {
        while !t.is_finished() {
            peak = peak.max(status_bytes(pid, "VmRSS"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total: i64 = pg.psql("postgres", "postgres", "select sum(n) from acct").parse().unwrap();
    let (ok, timeouts) = (committed.load(Ordering::Relaxed), wait_timeouts.load(Ordering::Relaxed));
    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "{CLIENTS} clients, pool 20, {elapsed:.1?}: {ok} transactions ({:.0}/s), {timeouts} wait timeouts, {} errors; \
         proxy RSS {:.1} MiB at rest, {:.1} MiB with everyone connected, peak {:.1} MiB",
        ok as f64 / elapsed.as_secs_f64(),
        errors.len(),
        rss_at_rest as f64 / 1048576.0,
        rss_connected as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert_eq!(total as u64, ok, "every committed transaction is in the table, and nothing else");
    assert!(ok > CLIENTS as u64, "every client got transactions through ({ok})");
}
