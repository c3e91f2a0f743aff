//! The endpoints a bench step measures, and the PgWeir processes the bench starts for its
//! `pgweir` steps: this same executable as `pgweir run` on a free loopback port with the step's
//! pool mode and size, killed when the step ends. A started process must never outlive its
//! [`PgweirProcess`] (it is killed on drop, also when a step fails).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Config;

use super::stats::PoolMode;

/// How long a started PgWeir has to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of its stderr is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// What one step connects its clients to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The upstream itself.
    Direct,
    /// A PgWeir the bench starts.
    Pgweir { mode: PoolMode, size: u32 },
    /// A `--target NAME=URL`.
    Named { name: String, config: Box<Config> },
}

impl Target {
    /// The `target` column: `direct`, `pgweir` or the name.
    pub fn name(&self) -> &str {
        match self {
            Target::Direct => "direct",
            Target::Pgweir { .. } => "pgweir",
            Target::Named { name, .. } => name,
        }
    }

    /// The progress-bar label, e.g. `pgweir transaction/8 ×16`.
    pub fn label(&self, clients: u32) -> String {
        match self {
            Target::Pgweir { mode, size } => format!("pgweir {mode}/{size} ×{clients}"),
            t => format!("{} ×{clients}", t.name()),
        }
    }
}

/// Starting a PgWeir for a step failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot run {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    #[error("it exited with {status} before accepting connections{}", stderr_tail(.stderr))]
    Exited { status: std::process::ExitStatus, stderr: String },
    #[error("it did not accept connections on port {port} within {}s{}", START_TIMEOUT.as_secs(), stderr_tail(.stderr))]
    NotListening { port: u16, stderr: String },
}

fn stderr_tail(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("; its output:\n{s}")
    }
}

/// A running `pgweir run` child, killed on drop.
pub struct PgweirProcess {
    /// `None` once stopped.
    child: Option<Child>,
    port: u16,
    stderr: Arc<Mutex<String>>,
}

impl PgweirProcess {
    /// Starts `exe run --listen 127.0.0.1:PORT --upstream URL --pool-size N --pool-mode M
    /// --auth trust` (`PGWEIR_LOG=warn`) and waits until the port accepts connections.
    pub async fn start(exe: &Path, upstream: &str, mode: PoolMode, size: u32) -> Result<PgweirProcess, TargetError> {
        Self::start_with(exe, upstream, mode, size, &[]).await
    }

    /// [`PgweirProcess::start`] with more `pgweir run` arguments (e.g. `-c FILE`; the flags
    /// above override the file). The child inherits this process's rlimits.
    pub async fn start_with(
        exe: &Path,
        upstream: &str,
        mode: PoolMode,
        size: u32,
        extra: &[String],
    ) -> Result<PgweirProcess, TargetError> {
        let port = free_port().map_err(TargetError::Port)?;
        let mut child = Command::new(exe)
            .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--upstream", upstream])
            .args(["--pool-size", &size.to_string(), "--pool-mode", mode.as_str(), "--auth", "trust"])
            .args(extra)
            .env("PGWEIR_LOG", "warn")
            .env_remove("PGWEIR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TargetError::Spawn { exe: exe.display().to_string(), source })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    if k.len() < STDERR_KEEP {
                        k.push_str(&line);
                        k.push('\n');
                    }
                }
            });
        }
        let mut proc = PgweirProcess { child: Some(child), port, stderr };
        let end = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(proc);
            }
            if let Some(Ok(Some(status))) = proc.child.as_mut().map(Child::try_wait) {
                // Give the reader a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(TargetError::Exited { status, stderr: proc.stderr_text() });
            }
            if tokio::time::Instant::now() >= end {
                return Err(TargetError::NotListening { port, stderr: proc.stderr_text() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The child's process id (`None` once stopped), for reading its `/proc` entries.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it has written to stderr so far (the first few KiB).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills it and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for PgweirProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The client config for a PgWeir on `port`: the upstream's user, password and database.
pub fn pgweir_client_config(upstream: &Config, port: u16) -> Config {
    let mut cfg = Config::new();
    cfg.host("127.0.0.1").port(port);
    if let Some(u) = upstream.get_user() {
        cfg.user(u);
    }
    if let Some(p) = upstream.get_password() {
        cfg.password(p);
    }
    if let Some(d) = upstream.get_dbname() {
        cfg.dbname(d);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let p = Target::Pgweir { mode: PoolMode::Session, size: 8 };
        assert_eq!((p.name(), p.label(16).as_str()), ("pgweir", "pgweir session/8 ×16"));
        assert_eq!(Target::Direct.label(4), "direct ×4");
        let cfg: Config = "postgres://a@h/db".parse().unwrap();
        assert_eq!(Target::Named { name: "bouncer".into(), config: Box::new(cfg) }.name(), "bouncer");
    }

    #[test]
    fn pgweir_clients_log_in_as_the_upstream_user() {
        let up: Config = "postgres://app:pw@db:5433/shop".parse().unwrap();
        let c = pgweir_client_config(&up, 7000);
        assert_eq!((c.get_user(), c.get_password(), c.get_dbname()), (Some("app"), Some(&b"pw"[..]), Some("shop")));
        assert_eq!(c.get_ports(), &[7000]);
    }
}
