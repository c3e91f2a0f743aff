//! Test helpers above the harness: start an in-process proxy in front of a test cluster,
//! connect through it, and a TCP relay that can sever server connections on demand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgweir::app::Proxy;
use pgweir::config::{self, Overrides};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::pg::PgCluster;

/// Starts a proxy on a free port with `toml` as its config file and `upstream` as `--upstream`.
pub async fn start_proxy_url(upstream: &str, toml: &str) -> Proxy {
    let overrides =
        Overrides { listen: vec!["127.0.0.1:0".into()], upstream: Some(upstream.to_string()), ..Overrides::default() };
    let cfg = config::from_str(toml, "test.toml", &overrides).expect("valid test config");
    Proxy::start(cfg).await.expect("proxy starts")
}

/// A proxy in front of `pg`, connecting to it as the client's own user.
pub async fn start_proxy(pg: &PgCluster, toml: &str) -> Proxy {
    start_proxy_url(&format!("postgres://{}:{}", pg.host(), pg.port()), toml).await
}

pub fn client_config(addr: SocketAddr, user: &str, password: Option<&str>, db: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user(user).dbname(db);
    c.connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        c.password(p);
    }
    c
}

/// Connects through the proxy; the connection task is spawned.
pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = client_config(addr, user, password, db).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn connect(addr: SocketAddr, user: &str, password: Option<&str>, db: &str) -> tokio_postgres::Client {
    try_connect(addr, user, password, db).await.expect("connect through the proxy")
}

/// The SQLSTATE of an error, or "" when it has none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay in front of a server whose connections can all be cut at once.
/// While stalled, it holds every byte it reads (connections stay open, nothing gets through),
/// like a network partition or a hung host. [`Severable::cut_after`] cuts one connection in the
/// middle of what the server sends.
pub struct Severable {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    stalled: tokio::sync::watch::Sender<bool>,
    /// Armed (`Some(n)`): the first connection to pass `n` more bytes from the server is cut
    /// right after them.
    cut: Arc<Mutex<Option<usize>>>,
}

/// Copies `from` to `to`, holding what it read while `stalled` is true; with `cut`, stops
/// (closing both) once this connection passed the armed number of bytes since it was armed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    cut: Option<Arc<Mutex<Option<usize>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0;
    while let Ok(mut n @ 1..) = from.read(&mut buf).await {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let mut last = false;
        if let Some(cut) = &cut {
            let mut armed = cut.lock().unwrap();
            match *armed {
                Some(limit) if passed + n > limit => {
                    (n, last, *armed) = (limit - passed, true, None);
                }
                Some(_) => passed += n,
                None => passed = 0,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() || last {
            return;
        }
    }
}

impl Severable {
    pub async fn start(upstream: SocketAddr) -> Severable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c2 = conns.clone();
        let (stalled, stall_rx) = tokio::sync::watch::channel(false);
        let cut: Arc<Mutex<Option<usize>>> = Arc::default();
        let cut2 = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (stall_rx, cut) = (stall_rx.clone(), cut2.clone());
                let h = tokio::spawn(async move {
                    if let Ok(out) = TcpStream::connect(upstream).await {
                        let ((in_r, in_w), (out_r, out_w)) = (inbound.into_split(), out.into_split());
                        let up = pump(in_r, out_w, stall_rx.clone(), None);
                        let down = pump(out_r, in_w, stall_rx, Some(cut));
                        tokio::select! {
                            _ = up => {}
                            _ = down => {}
                        }
                    }
                });
                c2.lock().unwrap().push(h);
            }
        });
        Severable { addr, conns, accept, stalled, cut }
    }

    /// Arms a cut: the first connection to pass `bytes` more bytes from the server is closed
    /// right after them (mid-message, as a crash would).
    pub fn cut_after(&self, bytes: usize) {
        *self.cut.lock().unwrap() = Some(bytes);
    }

    /// Stops passing bytes either way, on every connection, old and new (none is closed).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Passes bytes again, the held ones first.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Cuts every connection made so far (both ends see the socket close).
    pub fn sever(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Severable {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Runs one statement with the simple protocol and returns the first column of the first row.
pub async fn scalar(client: &tokio_postgres::Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("").to_string());
        }
    }
    Ok(String::new())
}

/// The server's (or proxy's) message text of an error, or its Display when it has none.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// Waits (up to 5 s) until `pg` shows exactly one session running `query`.
pub async fn wait_until_running(pg: &crate::harness::pg::PgCluster, query: &str) {
    let sql = format!("select count(*) from pg_stat_activity where query = '{}'", query.replace('\'', "''"));
    assert!(
        eventually(Duration::from_secs(5), || pg.psql("postgres", "postgres", &sql) == "1").await,
        "`{query}` never started"
    );
}

/// This process's resident memory (the in-process proxy included).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A proxy (or other) process, killed when the test ends, also when an assertion fails first.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
