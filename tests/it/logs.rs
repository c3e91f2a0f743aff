//! Logs of the real binary: JSON lines (`--log-json`), the slow-query log above
//! `metrics.slow_query` with the statement's text but none of its values, and the session
//! span naming the client's login on everything logged inside it.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::drain::{wait_listening, write_config};
use crate::support::Running;

use crate::harness::free_port;
use crate::harness::pg::{PgCluster, PgOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_logged_as_json_without_their_values() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\n");
    let toml = write_config(dir.path(), "pgweir.toml", &listen, "[metrics]\nslow_query = \"150ms\"\n", &pg);
    let log_path = dir.path().join("pgweir.log");
    let child = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--log-json", "--config"])
        .arg(&toml)
        .env("PGWEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let child = Running(child);
    let addr = wait_listening(port).await;
    let c = crate::support::connect(addr, "app", None, "postgres").await;
    c.batch_execute("select 'fast' || 1").await.unwrap();
    c.batch_execute("select pg_sleep(0.2), 'secret-value'").await.unwrap();
    c.query("select pg_sleep($1::int / 1000.0), 42", &[&250i32]).await.unwrap();

    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let logged =
        crate::support::eventually(Duration::from_secs(10), || read().matches("slow query").count() >= 2).await;
    drop(child);
    let log = read();
    assert!(logged, "two slow queries expected in:\n{log}");
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow query")).collect();
    assert_eq!(slow.len(), 2, "only the slow statements are logged:\n{log}");
    for line in &slow {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
        assert!(line.contains("\"user\":\"app\"") && line.contains("\"db\":\"postgres\""), "no session span: {line}");
        assert!(line.contains("\"route\":\"primary\""), "{line}");
    }
    assert!(slow[0].contains("\"statement\":\"select pg_sleep(?), ?\""), "{}", slow[0]);
    assert!(slow[1].contains("\"statement\":\"select pg_sleep($1::int / ?), ?\""), "{}", slow[1]);
    assert!(!log.contains("secret-value") && !log.contains("fast"), "a value reached the log:\n{log}");
    let ms: f64 = slow[0]
        .split("\"total_ms\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no total_ms: {}", slow[0]));
    assert!(ms >= 200.0, "{ms}");
}

/// Built with `--features otlp` only: the session and request spans reach an OTLP/HTTP
/// collector (a minimal one here that records what is posted to it).
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = collector.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 8192];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    let _ = tx.send((head.lines().next().unwrap_or("").to_string(), body));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                }
            });
        }
    });

    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = write_config(dir.path(), "pgweir.toml", &format!("listen = \"127.0.0.1:{port}\"\n"), "", &pg);
    let child = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--config"])
        .arg(&toml)
        .env("PGWEIR_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "pgweir-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Running(child);
    let addr = wait_listening(port).await;
    let c = crate::support::connect(addr, "app", None, "postgres").await;
    c.batch_execute("select 1").await.unwrap();
    drop(c);

    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((line, body)) = rx.recv().await {
            assert!(line.starts_with("POST /v1/traces"), "{line}");
            seen.extend_from_slice(&body);
            let has = |s: &[u8]| seen.windows(s.len()).any(|w| w == s);
            if has(b"session") && has(b"request") && has(b"fingerprint") && has(b"pgweir-test") {
                return;
            }
        }
    })
    .await;
    drop(child);
    assert!(got.is_ok(), "no session and request spans exported: {:?}", String::from_utf8_lossy(&seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_verifiers_never_reach_the_log() {
    let pg = PgCluster::start(PgOptions::default());
    let verifier = pg.psql("postgres", "postgres", "select rolpassword from pg_authid where rolname = 'scram_user'");
    let md5_hash = pg.psql("postgres", "postgres", "select rolpassword from pg_authid where rolname = 'md5_user'");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let toml = dir.path().join("pgweir.toml");
    std::fs::write(
        &toml,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_users = [\"clear_user\"]\n\
             [[users]]\nname = \"clear_user\"\npassword = \"clear_pass\"\n\
             [[users]]\nname = \"scram_user\"\nscram_verifier = \"{verifier}\"\n\
             [auth_query]\nuser = \"clear_user\"\npassword = \"clear_pass\"\n\
             [clusters.default]\nprimary = \"postgres://127.0.0.1:{}\"\n",
            pg.port()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("pgweir.log");
    let child = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--config"])
        .arg(&toml)
        .env("PGWEIR_LOG", "trace")
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let child = Running(child);
    let addr = wait_listening(port).await;
    let login = |user: &'static str, password: &'static str| async move {
        let c = crate::support::try_connect(addr, user, Some(password), "postgres").await?;
        crate::support::scalar(&c, "select current_user").await
    };
    assert_eq!(login("clear_user", "clear_pass").await.unwrap(), "clear_user");
    assert_eq!(login("scram_user", "scram_pass").await.unwrap(), "scram_user");
    assert!(login("clear_user", "Wrong-Guess-77").await.is_err());
    assert!(login("scram_user", "Wrong-Guess-78").await.is_err());
    // md5_user is only known to auth_query (its MD5 hash cannot serve SCRAM: the login fails).
    assert!(login("md5_user", "md5_pass").await.is_err());
    let psql = pg.bin("psql");
    let show = tokio::task::spawn_blocking(move || {
        let out = Command::new(psql)
            .args(["-XAtc", "show config", &format!("host=127.0.0.1 port={port} user=clear_user dbname=pgweir")])
            .env("PGPASSWORD", "clear_pass")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .unwrap();
    assert!(show.contains("pool_mode"), "{show}");
    drop(child);

    let log =
        std::fs::read_to_string(&log_path).unwrap() + &std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(log.contains("clear_user") && log.lines().count() > 20, "trace logging ran:\n{log}");
    let (_, keys) = verifier.split_once('$').unwrap();
    let mut secrets = vec!["clear_pass", "scram_pass", "md5_pass", "Wrong-Guess-77", "Wrong-Guess-78"];
    secrets.extend([verifier.as_str(), md5_hash.as_str(), keys]);
    secrets.extend(keys.split(['$', ':']).filter(|k| k.len() > 8));
    for secret in secrets {
        assert!(!log.contains(secret), "{secret:?} reached the log");
        assert!(!show.contains(secret), "{secret:?} is shown by SHOW CONFIG:\n{show}");
    }
}
