//! SIGTERM drains: the real binary stops accepting, lets every open transaction finish, tells
//! clients between transactions it is going away (57P01), and exits.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::pg::{PgCluster, PgOptions};

use crate::harness::free_port;

/// Writes a config file: `proxy` (the body of its `[proxy]` table, `listen` included), then
/// `extra` tables, then the default cluster on `pg`.
pub(crate) fn write_config(
    dir: &std::path::Path,
    name: &str,
    proxy: &str,
    extra: &str,
    pg: &PgCluster,
) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "[proxy]\n{proxy}auth = \"trust\"\n{extra}[clusters.default]\nprimary = \"postgres://postgres@127.0.0.1:{}\"\n",
        pg.port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until something accepts connections on `port` of 127.0.0.1.
pub(crate) async fn wait_listening(port: u16) -> std::net::SocketAddr {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = crate::support::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok()).await;
    assert!(up, "pgweir did not start on port {port}");
    addr
}

/// What happened to one transaction: its first statement ran, and whether COMMIT succeeded.
#[derive(Debug)]
struct Txn {
    client: i32,
    n: i32,
    committed: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_finish() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table drained (client int, n int, step int)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\nshutdown_timeout = \"15s\"\n");
    let toml = write_config(dir.path(), "pgweir.toml", &listen, "[pool]\nsize = 4\n", &pg);
    let mut child = spawn_pgweir(&toml);
    let addr = wait_listening(port).await;

    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut clients = Vec::new();
    for client in 0..8i32 {
        let started = started_tx.clone();
        clients.push(tokio::spawn(async move {
            let c = crate::support::connect(addr, "postgres", None, "postgres").await;
            let mut txns = Vec::new();
            let mut final_error = String::new();
            for n in 0.. {
                if let Err(e) = c.batch_execute("BEGIN").await {
                    final_error = crate::support::sqlstate(&e);
                    break;
                }
                let first = c.execute("insert into drained values ($1, $2, 1)", &[&client, &n]).await;
                if let Err(e) = first {
                    final_error = format!("first statement: {}", crate::support::message(&e));
                    break;
                }
                let _ = started.send(());
                // A transaction that is open when SIGTERM arrives.
                let rest = async {
                    c.batch_execute("select pg_sleep(0.2)").await?;
                    c.execute("insert into drained values ($1, $2, 2)", &[&client, &n]).await?;
                    c.batch_execute("COMMIT").await
                };
                let committed = rest.await.is_ok();
                txns.push(Txn { client, n, committed });
                if !committed {
                    break;
                }
            }
            (txns, final_error)
        }));
    }
    // SIGTERM once every client has a transaction open.
    for _ in 0..8 {
        started_rx.recv().await.unwrap();
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut all = Vec::new();
    for c in clients {
        let (txns, final_error) =
            tokio::time::timeout(Duration::from_secs(20), c).await.expect("client finished").unwrap();
        // Each client's last word is the proxy going away before a new transaction, not a cut.
        assert!(
            final_error == "57P01" || final_error.is_empty() || final_error.starts_with("08"),
            "client ended with {final_error:?}"
        );
        all.extend(txns);
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "pgweir exited with {status}");
    let cut: Vec<&Txn> = all.iter().filter(|t| !t.committed).collect();
    assert!(cut.is_empty(), "transactions cut by the shutdown: {cut:?}");
    // Every acknowledged commit has both of its rows, and nothing else is there.
    let mut want: Vec<String> = all.iter().map(|t| format!("{}|{}", t.client, t.n)).collect();
    want.sort();
    let got = pg.psql("postgres", "postgres", "select client || '|' || n from drained where step = 2 order by 1");
    let mut got: Vec<String> = got.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, want);
    let rows = got.len() as i64;
    let ones: i64 = pg.psql("postgres", "postgres", "select count(*) from drained where step = 1").parse().unwrap();
    assert_eq!(ones, rows);
    assert!(all.len() >= 8, "every client had a transaction open at SIGTERM: {all:?}");
}

pub(crate) fn spawn_pgweir(toml: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--config"])
        .arg(toml)
        .env("PGWEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_port_and_one_drains_without_losing_transactions() {
    let pg = PgCluster::start(PgOptions::default());
    pg.psql("postgres", "postgres", "create table handover (client int, n int, step int)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\nreuse_port = true\nshutdown_timeout = \"15s\"\n");
    let toml = write_config(dir.path(), "pgweir.toml", &listen, "[pool]\nsize = 4\n", &pg);
    let mut a = spawn_pgweir(&toml);
    let addr = wait_listening(port).await;
    let mut b = spawn_pgweir(&toml);
    // B shares the port (it would fail to bind otherwise and exit).
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Some(status)) = b.try_wait() {
                panic!("the second process exited: {status}");
            }
            let n = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            let listeners = n.lines().filter(|l| l.contains(&format!(":{port:04X} 00000000:0000 0A"))).count();
            if listeners >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two listeners on the port");

    // A reconnecting load: a new connection per transaction (pgbench -C).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for client in 0..4i32 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut committed, mut cut) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                // Connecting (or a BEGIN refused because that process is going away) may fail: retry.
                let Ok(c) = crate::support::try_connect(addr, "postgres", None, "postgres").await else { continue };
                if c.batch_execute("BEGIN").await.is_err() {
                    continue;
                }
                if c.execute("insert into handover values ($1, $2, 1)", &[&client, &n]).await.is_err() {
                    continue;
                }
                let rest = async {
                    c.execute("insert into handover values ($1, $2, 2)", &[&client, &n]).await?;
                    c.batch_execute("COMMIT").await
                };
                match rest.await {
                    Ok(()) => committed.push(format!("{client}|{n}")),
                    Err(e) => cut.push(format!("{client}|{n}: {e}")),
                }
            }
            (committed, cut)
        }));
    }
    let count =
        || -> i64 { pg.psql("postgres", "postgres", "select count(*) from handover where step = 2").parse().unwrap() };
    assert!(crate::support::eventually(Duration::from_secs(10), || count() >= 20).await, "load did not start");
    assert!(Command::new("kill").args(["-TERM", &a.id().to_string()]).status().unwrap().success());
    let a_status = tokio::task::spawn_blocking(move || a.wait()).await.unwrap().unwrap();
    assert!(a_status.success(), "first process exited with {a_status}");
    // B alone keeps serving the port.
    let before = count();
    assert!(
        crate::support::eventually(Duration::from_secs(10), || count() >= before + 20).await,
        "B did not take over"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    for l in load {
        let (committed, cut) = tokio::time::timeout(Duration::from_secs(20), l).await.expect("load ended").unwrap();
        assert!(cut.is_empty(), "transactions that had started were lost: {cut:?}");
        all.extend(committed);
    }
    let _ = b.kill();
    let _ = b.wait();
    all.sort();
    let got = pg.psql("postgres", "postgres", "select client || '|' || n from handover where step = 2 order by 1");
    let mut got: Vec<String> = got.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, all, "every acknowledged commit, and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaching_the_other_process_cancels_the_right_query() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (shared, own_a, own_b) = (free_port(), free_port(), free_port());
    let proxy = |own: u16, peer: u16| {
        format!("listen = [\"127.0.0.1:{shared}\", \"127.0.0.1:{own}\"]\nreuse_port = true\npeers = [\"127.0.0.1:{peer}\"]\n")
    };
    let mut a = spawn_pgweir(&write_config(dir.path(), "a.toml", &proxy(own_a, own_b), "", &pg));
    let mut b = spawn_pgweir(&write_config(dir.path(), "b.toml", &proxy(own_b, own_a), "", &pg));
    wait_listening(own_a).await;
    wait_listening(own_b).await;
    // A client of A runs a long query; its CancelRequest arrives at B.
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{own_a}").parse().unwrap();
    let mut client = tokio::task::spawn_blocking(move || {
        let mut client = crate::raw::RawClient::login(a_addr, "postgres", "postgres");
        client.query("select pg_sleep(30)");
        client
    })
    .await
    .unwrap();
    crate::support::wait_until_running(&pg, "select pg_sleep(30)").await;
    let outcome = tokio::task::spawn_blocking(move || {
        let (pid, secret) = client.key;
        let mut cancel = Vec::new();
        cancel.extend_from_slice(&16u32.to_be_bytes());
        cancel.extend_from_slice(&80_877_102u32.to_be_bytes());
        cancel.extend_from_slice(&pid.to_be_bytes());
        cancel.extend_from_slice(&secret);
        let started = std::time::Instant::now();
        std::io::Write::write_all(&mut std::net::TcpStream::connect(("127.0.0.1", own_b)).unwrap(), &cancel).unwrap();
        let mut code = String::new();
        loop {
            let (t, body) = client.read();
            if t == b'E' {
                let fields = String::from_utf8_lossy(&body).into_owned();
                code = fields.split('\0').find_map(|f| f.strip_prefix('C')).unwrap_or("").to_string();
            }
            if t == b'Z' {
                break;
            }
        }
        (code, started.elapsed())
    })
    .await
    .unwrap();
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    assert_eq!(outcome.0, "57014", "the query was not canceled");
    assert!(outcome.1 < Duration::from_secs(10), "canceled only after {:?}", outcome.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_the_admin_console_drains_and_exits() {
    let pg = PgCluster::start(PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\nadmin_users = [\"postgres\"]\n");
    let mut child = spawn_pgweir(&write_config(dir.path(), "pgweir.toml", &listen, "", &pg));
    wait_listening(port).await;
    let out = Command::new(pg.bin("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "pgweir",
            "-c",
            "SHUTDOWN",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("pgweir exited after SHUTDOWN")
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
