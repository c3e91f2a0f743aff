//! Throwaway Redis servers for integration tests: one `redis-server` child process per
//! `RedisServer`, on its own port and temp dir, no persistence, killed on drop (also when the
//! test panics). It must never touch a Redis it did not start.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{claim_dir, free_port, process_cmdline, scratch_dir, sweep_orphans};

const PORT_ATTEMPTS: usize = 3;

/// Name prefix of server dirs in [`scratch_dir`].
const REDIS_PREFIX: &str = "pgweir-redis-";
const PID_FILE: &str = "redis.pid";

pub struct RedisServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (`REDIS_SERVER` env var, else from PATH) and waits until it answers
    /// PING. Blocking; panics with the server log on failure.
    pub fn start() -> RedisServer {
        sweep_orphans(REDIS_PREFIX, stop_orphan);
        let dir =
            tempfile::Builder::new().prefix(REDIS_PREFIX).tempdir_in(scratch_dir()).expect("create redis temp dir");
        claim_dir(dir.path());
        let program = std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let log_path = dir.path().join("redis.log");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let log = fs::File::create(&log_path).expect("create redis log");
            let mut child = Command::new(&program)
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {program:?}: {e} (is redis-server installed?)"));
            let _ = fs::write(dir.path().join(PID_FILE), format!("{} {port}", child.id()));
            let deadline = Instant::now() + Duration::from_secs(10);
            let exited = loop {
                if ping(port) {
                    return RedisServer { dir, port, child: Some(child) };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let port_taken = log.contains("Address already in use");
            if exited.is_some() && port_taken && attempt < PORT_ATTEMPTS {
                continue;
            }
            panic!("redis-server failed to start on port {port} (attempt {attempt}, exit {exited:?}):\n{log}");
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether it currently answers PING.
    pub fn is_up(&self) -> bool {
        ping(self.port)
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]), empty, and waits
    /// until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let program = std::env::var_os("REDIS_SERVER").unwrap_or_else(|| "redis-server".into());
        let log = fs::File::create(self.log_path()).expect("create redis log");
        let child = Command::new(&program)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("respawn redis-server");
        let _ = fs::write(self.dir.path().join(PID_FILE), format!("{} {}", child.id(), self.port));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not come back on port {}", self.port);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the server (SIGKILL) and reaps it. Idempotent; drop calls it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// For [`sweep_orphans`]: kills the redis-server of a dir left by a killed test process, if it
/// still runs (its command line must be redis-server's: never a reused pid).
fn stop_orphan(dir: &std::path::Path) {
    let Ok(text) = fs::read_to_string(dir.join(PID_FILE)) else {
        return;
    };
    let mut words = text.split_whitespace();
    let (Some(Ok(pid)), Some(port)) = (words.next().map(str::parse::<u32>), words.next()) else {
        return;
    };
    let port_arg = format!(":{port}");
    if process_cmdline(pid).is_some_and(|c| c.contains("redis-server") && c.contains(&port_arg)) {
        eprintln!("harness: killing orphaned redis-server {pid} ({})", dir.display());
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// One RESP PING on a fresh connection; true on `+PONG`.
fn ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    &buf == b"+PONG\r\n"
}
