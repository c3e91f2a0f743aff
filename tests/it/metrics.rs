//! The HTTP endpoint under load: `/metrics` scraped while pgbench runs through the proxy
//! parses strictly as Prometheus text exposition and its counters move; `/readyz` follows the
//! primary.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::pg::{PgCluster, PgOptions};
use crate::support::start_proxy;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A strict reader of the text exposition format (version 0.0.4): every line is a HELP or
/// TYPE comment or a sample `name{label="value",...} number`; names and label names are
/// valid; every sample's family has a TYPE; counters end in `_total`; histogram series come
/// as `_bucket` (with `le`), `_sum` and `_count`. Returns samples keyed by `name{labels}`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                "HELP" => assert!(!value.is_empty(), "empty help: {line:?}"),
                "TYPE" => {
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&value), "{line:?}");
                    if value == "counter" {
                        assert!(name.ends_with("_total"), "counter without _total: {name}");
                    }
                    assert!(types.insert(name.to_string(), value.to_string()).is_none(), "TYPE twice: {name}");
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "blank line in exposition");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line:?}")))),
            None => (series, None),
        };
        assert!(valid_name(name), "bad sample name {line:?}");
        if let Some(labels) = labels {
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(k) && !k.starts_with("__"), "bad label name {k:?} in {line:?}");
                let end = after.find('"').unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).map(String::as_str) == Some("histogram")))
            .unwrap_or(name);
        let ty = types.get(family).unwrap_or_else(|| panic!("sample before its TYPE: {line:?}"));
        if ty == "histogram" && name.ends_with("_bucket") {
            assert!(labels.is_some_and(|l| l.contains("le=\"")), "bucket without le: {line:?}");
        }
        samples.insert(series.to_string(), v);
    }
    samples
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_under_pgbench_and_readyz_follows_the_primary() {
    let mut pg = PgCluster::start(PgOptions::default());
    let port = pg.port().to_string();
    let init = Command::new(pg.bin("pgbench"))
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let toml = "[proxy]\nauth = \"trust\"\n[pool]\nsize = 4\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let proxy = start_proxy(&pg, toml).await;
    let maddr = proxy.metrics_addr().expect("metrics listener");
    let paddr = proxy.local_addr();
    assert_eq!(get(maddr, "/readyz").await.0, 200);

    let bin = pg.bin("pgbench");
    let bench = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["-n", "-S", "-c", "8", "-j", "2", "-T", "4", "-h", "127.0.0.1", "-p", &paddr.port().to_string()])
            .args(["-U", "postgres", "postgres"])
            .output()
            .unwrap()
    });
    // Scrape while it runs: clients are connected and transactions are counted.
    let tx = "pgweir_transactions_total{route=\"primary\"}";
    let mut first = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(maddr, "/metrics").await;
        assert_eq!(status, 200);
        let s = parse_exposition(&body);
        let clients: f64 = ["idle", "waiting", "active"]
            .iter()
            .map(|st| value(&s, &format!("pgweir_client_connections{{state=\"{st}\"}}")))
            .sum();
        first.get_or_insert(value(&s, tx));
        if clients >= 8.0 && value(&s, tx) > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no load visible in /metrics:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = bench.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let processed: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("processed:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let (_, body) = get(maddr, "/metrics").await;
    let s = parse_exposition(&body);
    let done = value(&s, tx);
    assert!(done >= processed && done > first.unwrap_or(0.0), "transactions {done}, pgbench processed {processed}");
    assert!(value(&s, "pgweir_queries_total{route=\"primary\"}") >= processed);
    assert!(value(&s, "pgweir_client_logins_total") >= 8.0);
    assert!(value(&s, "pgweir_pool_wait_seconds_count") >= processed);
    assert!(value(&s, "pgweir_transaction_duration_seconds_count{route=\"primary\"}") >= processed);
    let servers: f64 = s.iter().filter(|(k, _)| k.starts_with("pgweir_server_connections{")).map(|(_, v)| v).sum();
    assert!((1.0..=4.0).contains(&servers), "server connections {servers} (pool size 4)");
    // pgbench's 8 clients over a pool of 4 had to wait.
    assert!(value(&s, "pgweir_pool_waits_total") > 0.0);
    // Errors are counted by SQLSTATE class.
    let c = crate::support::connect(paddr, "postgres", None, "postgres").await;
    // A prepared statement stays on its server connection, counted once it is back in the pool.
    c.query("select $1::int + 1", &[&1i32]).await.unwrap();
    let pool = "pgweir_server_prepared_statements{pool=\"postgres/postgres\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The server goes back to its pool just after the answer reaches the client.
        let (_, body) = get(maddr, "/metrics").await;
        if value(&parse_exposition(&body), pool) >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pool} not counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.simple_query("select * from no_such_table").await.is_err());
    let (_, body) = get(maddr, "/metrics").await;
    assert!(value(&parse_exposition(&body), "pgweir_errors_total{class=\"42\"}") >= 1.0);
    // Not ready while the primary is down.
    pg.stop();
    assert_eq!(get(maddr, "/readyz").await.0, 503);
    assert_eq!(get(maddr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_checks_are_counted_per_member() {
    let pg = PgCluster::start(PgOptions::default());
    // A replica nobody listens on: every poll of it fails.
    let dead = crate::harness::free_port();
    let toml = format!(
        "[proxy]\nauth = \"trust\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[routing]\nhealth_interval = \"100ms\"\n\
         [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\nreplicas = [\"postgres://127.0.0.1:{dead}\"]\n",
        pg.port()
    );
    let cfg = pgweir::config::from_str(
        &toml,
        "test.toml",
        &pgweir::config::Overrides { listen: vec!["127.0.0.1:0".into()], ..Default::default() },
    )
    .unwrap();
    let proxy = pgweir::app::Proxy::start(cfg).await.unwrap();
    let maddr = proxy.metrics_addr().unwrap();
    let series = "pgweir_health_check_failures_total{cluster=\"default\",member=\"replica0\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0.0;
    loop {
        let s = parse_exposition(&get(maddr, "/metrics").await.1);
        let now = value(&s, series);
        assert!(now >= last, "a counter went down: {last} -> {now}");
        last = now;
        if now >= 2.0 {
            assert_eq!(value(&s, "pgweir_health_check_failures_total{cluster=\"default\",member=\"primary\"}"), 0.0);
            assert_eq!(value(&s, "pgweir_replica_healthy{cluster=\"default\",replica=\"0\"}"), 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "failures not counted: {series} = {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
