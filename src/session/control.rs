//! Operator control of sessions from the admin console: PAUSE and RESUME (new transactions of a
//! database, or of all, wait until resumed; transactions in progress finish), and the live
//! clients' facts SHOW CLIENTS lists and KILL acts on (through each client's cancel slot, which
//! wakes the session wherever it waits).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::Notify;

#[derive(Default)]
struct Paused {
    all: bool,
    databases: HashSet<String>,
}

/// PAUSE / RESUME state, and the drain at shutdown.
#[derive(Default)]
pub struct Control {
    paused: Mutex<Paused>,
    changed: Notify,
    /// Shutting down: a client that is not inside a transaction is told so and closed.
    pub draining: std::sync::atomic::AtomicBool,
    /// Sessions holding a server or inside a transaction block.
    pub busy: std::sync::atomic::AtomicUsize,
    /// Signalled when `busy` drops.
    pub idle: Notify,
    /// SHUTDOWN from the admin console: the process drains as on SIGTERM.
    pub shutdown: Notify,
}

impl Control {
    /// Pauses one database (None: all).
    pub fn pause(&self, db: Option<&str>) {
        let mut p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        match db {
            Some(d) => {
                p.databases.insert(d.to_string());
            }
            None => p.all = true,
        }
    }

    /// Resumes one database (None: all, including those paused one by one).
    pub fn resume(&self, db: Option<&str>) {
        {
            let mut p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
            match db {
                Some(d) => {
                    p.databases.remove(d);
                }
                None => {
                    p.all = false;
                    p.databases.clear();
                }
            }
        }
        self.changed.notify_waiters();
    }

    pub fn is_paused(&self, db: &str) -> bool {
        let p = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        p.all || p.databases.contains(db)
    }

    /// Returns once `db` is not paused.
    pub async fn wait_resumed(&self, db: &str) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_paused(db) {
                return;
            }
            notified.await;
        }
    }
}

/// What SHOW CLIENTS shows of one client, and how KILL ends it.
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub connected: SystemTime,
    pub tls: bool,
}
