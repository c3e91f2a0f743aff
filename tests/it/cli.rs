//! The `pgweir` binary itself, driven the way the README tells people to: `check`, and `run`
//! with flags in front of a cluster, exercised with psql and pgbench.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;
use crate::harness::pg::{PgCluster, PgOptions};

struct Running(Child, u16);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pgweir run` with the acceptance flags and waits until it accepts connections.
fn run_pgweir(pg: &PgCluster, extra: &[&str]) -> Running {
    let port = free_port();
    let upstream = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let child = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--upstream", &upstream])
        .args(["--pool-mode", "transaction", "--pool-size", "10", "--auth", "trust"])
        .args(extra)
        .env("PGWEIR_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn pgweir");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "pgweir did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running(child, port)
}

fn psql_cmd(port: u16, user: &str, db: &str) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", db]);
    c.env_remove("PGPASSWORD").env_remove("PGSERVICE");
    c
}

#[test]
fn check_reports_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[pool]\nsize = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgweir")).args(["check", "-c"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pool]\nsize = 5\nmode = \"sometimes\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgweir")).args(["check", "-c"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3") && err.contains("pool.mode"), "{err}");
    for example in [
        "config/sidecar.toml",
        "config/fleet.toml",
        "config/split.toml",
        "config/cache.toml",
        "config/sharded.toml",
        "docker/pgweir.toml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let out = Command::new(env!("CARGO_BIN_EXE_pgweir"))
            .args(["check", "-c"])
            .arg(&path)
            .env("APP_PASSWORD", "x")
            .env("PGWEIR_AUTH_PASSWORD", "y")
            .env("PGWEIR_REDIS_URL", "redis://127.0.0.1:6379")
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn pgbench_through_the_proxy_uses_at_most_the_pool() {
    let pg = PgCluster::start(PgOptions { max_connections: 200, ..PgOptions::default() });
    let proxy = run_pgweir(&pg, &[]);
    let init = Command::new(pg.bin("pgbench"))
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", &proxy.1.to_string(), "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let info = pg.conninfo("postgres", "postgres");
        std::thread::spawn(move || {
            let mut max = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = crate::harness::pg::try_psql(
                    &info,
                    "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
                )
                .unwrap();
                max = max.max(n.parse().unwrap());
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    let port = proxy.1.to_string();
    let run = |extra: &[&str]| {
        let out = Command::new(pg.bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-j", "2"])
            .args(extra)
            .arg("postgres")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("number of failed transactions: 0 (0.000%)"), "{text}");
        text
    };
    let select_only = run(&["-S", "-c", "100", "-T", "5"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = sampler.join().unwrap();
    assert!(max <= 12, "PostgreSQL saw {max} connections from the proxy");
    assert!(select_only.contains("number of clients: 100"));
    run(&["-c", "10", "-T", "3"]);
}

#[test]
fn psql_ctrl_c_cancels_through_the_proxy() {
    let pg = PgCluster::start(PgOptions::default());
    let proxy = run_pgweir(&pg, &[]);
    let mut child = psql_cmd(proxy.1, "postgres", "postgres")
        .args(["-c", "select pg_sleep(8)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while pg.psql("postgres", "postgres", "select count(*) from pg_stat_activity where query = 'select pg_sleep(8)'")
        != "1"
    {
        assert!(Instant::now() < end, "query never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    // What Ctrl-C does: SIGINT to psql, which sends a CancelRequest.
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    let elapsed = sent.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("canceling statement due to user request"), "{err}");
    assert!(elapsed < Duration::from_secs(1), "cancel took {elapsed:?}");
}

#[test]
fn psql_exit_without_commit_leaves_no_row_and_no_open_transaction() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table t_exit(x int)");
    let proxy = run_pgweir(&pg, &[]);
    let out = psql_cmd(proxy.1, "postgres", "postgres")
        .args(["-c", "begin", "-c", "insert into t_exit values (1)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let open = pg.psql(
            "postgres",
            "postgres",
            "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
        );
        if open == "0" {
            break;
        }
        assert!(Instant::now() < end, "{open} server sessions left idle in transaction");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pg.psql("postgres", "postgres", "select count(*) from t_exit"), "0");
}
