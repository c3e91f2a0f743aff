//! Idle mode (`pgweir bench --idle N`): what an idle client connection costs PgWeir. It raises
//! this process's RLIMIT_NOFILE soft limit to the hard limit (the PgWeir child inherits it),
//! starts a PgWeir of its own (transaction mode, a small pool, `max_client_connections` and a
//! metrics listener from a config file in a temp dir), then logs in raw clients (a
//! StartupMessage over a TcpStream, read to ReadyForQuery, then left idle) a window of them at
//! a time. At each step it waits until PgWeir's `pgweir_client_connections` reaches the count,
//! lets it settle and reads the child's VmRSS and `/proc/PID/fd`. Linux only (`/proc`).
//!
//! It must never leave the child or the temp dir behind: both are removed on drop, also when a
//! step fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::args::{IdleSettings, Settings};
use super::idle_report::{self, IdleReport, IdleSample, IdleSettingsReport};
use super::report::mask_password;
use super::stats::PoolMode;
use super::target::{free_port, PgweirProcess};
use super::BenchError;
use crate::wire::backend::ErrorFields;
use crate::wire::startup::encode_startup;
use crate::wire::{tag, FrameHead};

/// Server connections of the PgWeir under test: idle clients need none but the first login's.
const POOL_SIZE: u32 = 4;
/// Logins in flight at once.
const CONCURRENT_LOGINS: usize = 256;
/// One login: connect, startup, ReadyForQuery.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a step waits for PgWeir to count its connections.
const COUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between reaching the count and sampling.
const SETTLE: Duration = Duration::from_secs(1);
/// File descriptors either process needs besides one per client.
const FD_HEADROOM: u64 = 256;

/// Runs idle mode to the end: prints the table and the slope, writes `--json`.
pub async fn run(settings: &Settings, idle: &IdleSettings) -> Result<(), BenchError> {
    let want = idle.connections();
    let (nofile_before, nofile_after) =
        crate::net::raise_nofile().map_err(|e| BenchError::Idle(format!("RLIMIT_NOFILE: {e}")))?;
    let need = u64::from(want) + FD_HEADROOM;
    if nofile_after < need {
        return Err(BenchError::Idle(format!(
            "--idle {want} needs about {need} open files in this process and in PgWeir, but RLIMIT_NOFILE's hard \
             limit is {nofile_after} (raise it, e.g. `ulimit -Hn {need}` as root, or lower --idle)"
        )));
    }
    if let Some(ports) = local_ports() {
        if u64::from(want) > ports {
            return Err(BenchError::Idle(format!(
                "--idle {want}: only {ports} local ports (net.ipv4.ip_local_port_range) for connections to one address"
            )));
        }
    }
    eprintln!("RLIMIT_NOFILE soft limit: {nofile_before} -> {nofile_after}");

    let exe = std::env::current_exe().map_err(BenchError::Exe)?;
    let dir = TempDir::create()?;
    let metrics_port = free_port().map_err(|e| BenchError::Idle(format!("no free port for metrics: {e}")))?;
    let config = dir.0.join("pgweir.toml");
    let text = format!(
        "# Written by pgweir bench --idle.\n[pool]\nmax_client_connections = {}\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        u64::from(want) + 16
    );
    std::fs::write(&config, text).map_err(|source| BenchError::Write { path: config.display().to_string(), source })?;
    let extra = ["-c".to_string(), config.display().to_string()];
    let pool = format!("{}/{POOL_SIZE}", PoolMode::Transaction);
    let proc = PgweirProcess::start_with(&exe, &settings.upstream_url, PoolMode::Transaction, POOL_SIZE, &extra)
        .await
        .map_err(|source| BenchError::Pgweir { pool, source })?;
    let pid = proc.pid().ok_or_else(|| BenchError::Idle("PgWeir is not running".into()))?;

    let mut measured = Measured::default();
    let result = measure(settings, idle, &proc, pid, metrics_port, &mut measured).await;
    proc.stop().await;
    drop(dir);
    // What was measured before a failure is still printed (and written), then the error.
    if let Some(at_rest) = measured.at_rest.filter(|_| result.is_ok() || !measured.samples.is_empty()) {
        let report = IdleReport::new(
            IdleSettingsReport {
                upstream: mask_password(&settings.upstream_url),
                connections: want,
                steps: idle.steps.clone(),
                pool_mode: PoolMode::Transaction.as_str(),
                pool_size: POOL_SIZE,
                concurrent_logins: CONCURRENT_LOGINS,
                nofile_before,
                nofile_after,
            },
            at_rest,
            &measured.samples,
            result.as_ref().err().map(ToString::to_string),
        );
        print!("{}", report.text());
        if let Some(path) = &settings.json {
            std::fs::write(path, report.to_json())
                .map_err(|source| BenchError::Write { path: path.display().to_string(), source })?;
        }
    }
    result
}

/// What a run has measured so far.
#[derive(Default)]
struct Measured {
    at_rest: Option<IdleSample>,
    samples: Vec<IdleSample>,
}

/// Samples PgWeir at rest, then logs clients in step by step and samples it at each count.
/// The clients are closed when this returns.
async fn measure(
    settings: &Settings,
    idle: &IdleSettings,
    proc: &PgweirProcess,
    pid: u32,
    metrics_port: u16,
    out: &mut Measured,
) -> Result<(), BenchError> {
    let with_output = |e: BenchError| match e {
        BenchError::Idle(m) => BenchError::Idle(format!("{m}{}{}", fd_hint(pid), output(proc))),
        e => e,
    };
    tokio::time::sleep(SETTLE).await;
    let at_rest = sample(pid, 0, 0.0)?;
    out.at_rest = Some(at_rest);
    let login = Arc::new(Login::new(&settings.upstream, proc.port()));
    let want = idle.connections();
    let mut clients: Vec<TcpStream> = Vec::with_capacity(want as usize);
    for &step in &idle.steps {
        let started = Instant::now();
        if clients.is_empty() {
            // The first login is the one that reaches the server: alone, so a broken
            // upstream fails with one message.
            let c = Arc::clone(&login).connect().await.map_err(|reason| {
                with_output(BenchError::Idle(format!("the first idle client could not log in to PgWeir: {reason}")))
            })?;
            clients.push(c);
        }
        open(&login, step as usize, want, &mut clients).await.map_err(with_output)?;
        let took = started.elapsed().as_secs_f64();
        wait_count(metrics_port, u64::from(step)).await.map_err(with_output)?;
        tokio::time::sleep(SETTLE).await;
        let s = sample(pid, step, took)?;
        eprintln!(
            "{step} idle connections (logged in in {took:.2}s): RSS {:.1} MiB, {} fds",
            s.rss_bytes as f64 / 1048576.0,
            s.fds
        );
        out.samples.push(s);
        // Stop here, with a reason, rather than stall at PgWeir's open-file limit later.
        if let (true, Some(limit)) = (step < want, pgweir_nofile(pid)) {
            let per = s.fds.saturating_sub(at_rest.fds) as f64 / f64::from(step);
            let need = s.fds as f64 + per * f64::from(want - step);
            if need > limit as f64 {
                return Err(BenchError::Idle(format!(
                    "PgWeir holds {per:.2} open files per idle connection ({} at {step}), so {want} would need about \
                     {need:.0}, over its RLIMIT_NOFILE of {limit}: raise the hard limit (e.g. `ulimit -Hn {}` as \
                     root before the bench; the bench raises the soft limit to it) or lower --idle",
                    s.fds,
                    (need as u64 + FD_HEADROOM).next_power_of_two()
                )));
            }
        }
    }
    Ok(())
}

/// PgWeir's soft RLIMIT_NOFILE, from `/proc/PID/limits`.
fn pgweir_nofile(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits")).ok().and_then(|t| idle_report::open_files_limit(&t))
}

/// Says so when PgWeir is at (or near) its open-file limit, the usual reason a step stalls.
fn fd_hint(pid: u32) -> String {
    let limit = pgweir_nofile(pid);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).ok();
    match (open, limit) {
        (Some(open), Some(limit)) if open as u64 + 16 >= limit => format!(
            " (PgWeir has {open} files open, its RLIMIT_NOFILE is {limit}: raise the hard limit, e.g. \
             `ulimit -Hn 65536` as root before the bench, which raises the soft limit to it)"
        ),
        _ => String::new(),
    }
}

fn output(proc: &PgweirProcess) -> String {
    let s = proc.stderr_text();
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("; PgWeir's output:\n{s}")
    }
}

/// Logs clients in until `clients` holds `upto`, at most [`CONCURRENT_LOGINS`] at a time.
async fn open(login: &Arc<Login>, upto: usize, want: u32, clients: &mut Vec<TcpStream>) -> Result<(), BenchError> {
    let mut started = clients.len();
    let mut running = JoinSet::new();
    while clients.len() < upto {
        while started < upto && running.len() < CONCURRENT_LOGINS {
            running.spawn(Arc::clone(login).connect());
            started += 1;
        }
        let failed = |reason: String, n: usize| {
            BenchError::Idle(format!("idle client {} of {want} could not log in to PgWeir: {reason}", n + 1))
        };
        match running.join_next().await {
            Some(Ok(Ok(c))) => clients.push(c),
            Some(Ok(Err(reason))) => return Err(failed(reason, clients.len())),
            Some(Err(e)) => return Err(failed(format!("the login task failed: {e}"), clients.len())),
            None => break,
        }
    }
    Ok(())
}

/// One raw client's login: its address and StartupMessage.
struct Login {
    port: u16,
    startup: Bytes,
}

impl Login {
    /// Logs in with the upstream URL's user and database, as the sweep's clients do.
    fn new(upstream: &tokio_postgres::Config, port: u16) -> Login {
        let user = upstream.get_user().unwrap_or("postgres");
        let database = upstream.get_dbname().unwrap_or(user);
        let mut out = BytesMut::new();
        encode_startup(&[("user", user), ("database", database), ("application_name", "pgweir-bench idle")], &mut out);
        Login { port, startup: out.freeze() }
    }

    /// Connects, sends the StartupMessage and reads to ReadyForQuery; returns the idle socket.
    async fn connect(self: Arc<Self>) -> Result<TcpStream, String> {
        let login = async {
            let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| format!("connect: {e}"))?;
            tcp.write_all(&self.startup).await.map_err(|e| format!("send the startup message: {e}"))?;
            let mut buf = BytesMut::with_capacity(1024);
            loop {
                while let Some(h) = FrameHead::parse(&buf, 1 << 20).map_err(|e| e.to_string())? {
                    if buf.len() < h.total {
                        break;
                    }
                    let frame = buf.split_to(h.total);
                    let body = &frame[5..];
                    match h.tag {
                        tag::AUTHENTICATION => match body.get(..4) {
                            Some([0, 0, 0, 0]) => {}
                            _ => return Err("PgWeir asked for a password (idle mode starts it with trust)".into()),
                        },
                        tag::ERROR_RESPONSE => {
                            let f = ErrorFields::parse(body);
                            return Err(format!(
                                "{} {}",
                                f.code.unwrap_or_default(),
                                f.message.unwrap_or_else(|| "error without a message".into())
                            ));
                        }
                        tag::READY_FOR_QUERY => return Ok(tcp),
                        _ => {}
                    }
                }
                if tcp.read_buf(&mut buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                    return Err("PgWeir closed the connection before ReadyForQuery".into());
                }
            }
        };
        tokio::time::timeout(LOGIN_TIMEOUT, login)
            .await
            .unwrap_or_else(|_| Err(format!("no ReadyForQuery within {}s", LOGIN_TIMEOUT.as_secs())))
    }
}

/// Polls PgWeir's `/metrics` until it counts `want` client connections.
async fn wait_count(metrics_port: u16, want: u64) -> Result<(), BenchError> {
    let end = Instant::now() + COUNT_TIMEOUT;
    let mut seen = None;
    loop {
        match scrape(metrics_port).await {
            Ok(text) => seen = idle_report::client_connections(&text),
            Err(e) if Instant::now() >= end => {
                return Err(BenchError::Idle(format!("cannot read PgWeir's metrics on port {metrics_port}: {e}")))
            }
            Err(_) => {}
        }
        if seen.is_some_and(|n| n >= want) {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(BenchError::Idle(format!(
                "PgWeir counted {} of {want} client connections after {}s",
                seen.map_or_else(|| "none".to_string(), |n| n.to_string()),
                COUNT_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics` on 127.0.0.1: the body.
async fn scrape(port: u16) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut resp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5s"))??;
    let text = String::from_utf8_lossy(&resp);
    Ok(text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string())
}

/// PgWeir's VmRSS and open files now.
fn sample(pid: u32, connections: u32, connect_s: f64) -> Result<IdleSample, BenchError> {
    let proc_err = |what: &str, e: std::io::Error| BenchError::Idle(format!("cannot read /proc/{pid}/{what}: {e}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| proc_err("status", e))?;
    let rss_bytes = idle_report::vm_rss(&status)
        .ok_or_else(|| BenchError::Idle(format!("no VmRSS in /proc/{pid}/status (has PgWeir exited?)")))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| proc_err("fd", e))?.count() as u64;
    Ok(IdleSample { connections, rss_bytes, fds, connect_s })
}

/// How many local ports connections to one address can use, from `ip_local_port_range`.
fn local_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some(hi.saturating_sub(lo) + 1)
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir, BenchError> {
        let path = std::env::temp_dir().join(format!("pgweir-bench-idle-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|source| BenchError::Write { path: path.display().to_string(), source })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_nofile_never_lowers_it() {
        let (before, after) = crate::net::raise_nofile().unwrap();
        assert!(after >= before);
        // A second call finds it raised already.
        assert_eq!(crate::net::raise_nofile().unwrap().0, after);
    }

    #[test]
    fn startup_names_the_upstream_user_and_database() {
        let up: tokio_postgres::Config = "postgres://app:pw@db:5433/shop".parse().unwrap();
        let l = Login::new(&up, 7000);
        let s = &l.startup[..];
        assert_eq!(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize, s.len());
        assert_eq!(&s[4..8], &196_608u32.to_be_bytes());
        let text = String::from_utf8_lossy(&s[8..]);
        assert!(text.contains("user\0app\0database\0shop\0"), "{text:?}");
        assert!(!text.contains("pw"), "{text:?}");
    }
}
