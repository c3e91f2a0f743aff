//! SIGTERM drains: the real binary stops accepting, lets every open transaction finish, tells
//! clients between transactions it is going away (57P01), and exits.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::pg::{PgCluster, PgOptions};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    let toml = dir.path().join("pgweir.toml");
    std::fs::write(
        &toml,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nauth = \"trust\"\nshutdown_timeout = \"15s\"\n[pool]\nsize = 4\n\
             [clusters.default]\nprimary = \"postgres://postgres@127.0.0.1:{}\"\n",
            pg.port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgweir"))
        .args(["run", "--config"])
        .arg(&toml)
        .env("PGWEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = crate::support::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok()).await;
    assert!(up, "pgweir did not start");

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
