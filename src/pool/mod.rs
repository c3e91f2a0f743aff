//! Server connection pools, one per (database, user), built on `deadpool`. A pool hands out
//! authenticated connections that are idle at a ReadyForQuery boundary, replaces dead ones at
//! checkout, closes idle and old ones from a timer, and keeps `min_idle` warm. It knows nothing
//! of clients: the session decides when to check out and what state to clean before returning.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult, Timeouts};
use thiserror::Error;

use crate::config::PoolMode;

pub mod topology;
use crate::net::is_idle_and_open;
use crate::server::registry::ServerList;
use crate::server::{connect, ServerConn, ServerError, Target};
use crate::wire::{PgError, SqlState};

/// Creates and checks server connections for one pool.
pub struct Manager {
    pub target: Arc<Target>,
    pub lifetime: Duration,
    /// ParameterStatus values of a fresh connection: what a client that sets nothing should see.
    pub defaults: OnceLock<HashMap<String, String>>,
    /// The pool's open connections (SHOW SERVERS).
    pub servers: Arc<ServerList>,
}

impl Manager {
    pub fn new(target: Arc<Target>, lifetime: Duration) -> Manager {
        Manager { target, lifetime, defaults: OnceLock::new(), servers: Arc::default() }
    }
}

impl managed::Manager for Manager {
    /// Boxed: the pool moves its connections around on every checkout and return, and a
    /// pointer is cheaper to move than the connection.
    type Type = Box<ServerConn>;
    type Error = ServerError;

    async fn create(&self) -> Result<Box<ServerConn>, ServerError> {
        // Boxed: the connect state machine is large, and every checkout future would carry it.
        let mut conn = Box::pin(connect(&self.target)).await?;
        let _ = self.defaults.set(conn.params.clone());
        let tcp = conn.stream.tcp();
        let (peer, local) = (tcp.peer_addr().ok(), tcp.local_addr().ok());
        let tls = conn.stream.is_tls();
        conn.registered = Some(self.servers.register(conn.id, peer, local, conn.cancel_key.pid, tls));
        Ok(Box::new(conn))
    }

    async fn recycle(&self, conn: &mut Box<ServerConn>, metrics: &Metrics) -> RecycleResult<ServerError> {
        if conn.broken || conn.status != b'I' || !conn.rbuf.is_empty() {
            return Err(RecycleError::message("connection was left in an unusable state"));
        }
        if metrics.age() > self.lifetime {
            return Err(RecycleError::message("connection reached its lifetime"));
        }
        if !is_idle_and_open(&mut conn.stream) {
            return Err(RecycleError::message("server closed the connection"));
        }
        Ok(())
    }
}

/// A checked-out server connection. It shows as active in SHOW SERVERS until it is dropped
/// (returned to its pool) or discarded.
pub struct Pooled(Option<managed::Object<Manager>>);

impl Pooled {
    fn new(conn: managed::Object<Manager>) -> Pooled {
        if let Some(r) = &conn.registered {
            r.slot.checked_out();
        }
        Pooled(Some(conn))
    }

    /// Records the client (its SHOW CLIENTS id) now holding this connection.
    pub fn link(&self, client: i32) {
        if let Some(r) = &self.registered {
            r.slot.link(client);
        }
    }
}

impl std::ops::Deref for Pooled {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.0.as_deref().expect("a Pooled holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.0.as_deref_mut().expect("a Pooled holds its connection until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(c) = self.0.as_ref() else { return };
        let Some(r) = &c.registered else { return };
        r.slot.returned(c.prepared.len());
        if r.list.is_retired() {
            // Its pool was retired by RELOAD: close rather than return it.
            if let Some(c) = self.0.take() {
                let _ = managed::Object::take(c);
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("no server connection available in pool \"{pool}\" within {waited:?} (pool size {size})")]
    WaitTimeout { pool: String, waited: Duration, size: usize },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("pool \"{0}\" is closed")]
    Closed(String),
}

impl CheckoutError {
    pub fn to_pg(&self) -> PgError {
        match self {
            CheckoutError::WaitTimeout { .. } => {
                PgError::error(SqlState::TOO_MANY_CONNECTIONS, format!("pgweir: {self}"))
                    .with_hint("raise pool.size or pool.wait_timeout, or shorten transactions")
            }
            CheckoutError::Server(e) => PgError::error(SqlState::CONNECTION_FAILURE, format!("pgweir: {e}")),
            CheckoutError::Closed(_) => PgError::error(SqlState::ADMIN_SHUTDOWN, format!("pgweir: {self}")),
        }
    }
}

/// One pool of server connections for a (database, user).
pub struct ServerPool {
    /// "database/user", used in messages and metrics.
    pub name: String,
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    pub idle_timeout: Duration,
    wait_timeout: Duration,
    pool: managed::Pool<Manager>,
    stale: Mutex<Stale>,
    /// Clients pinned to a server of this pool, and how many may be.
    pinned: std::sync::atomic::AtomicUsize,
    pub max_pinned: usize,
    /// Clients of this pool holding a server, and waiting for one (SHOW POOLS).
    pub clients_active: std::sync::atomic::AtomicI64,
    pub clients_waiting: std::sync::atomic::AtomicI64,
    /// Totals for SHOW STATS.
    pub stats: PoolStats,
    /// The cluster whose member this pool connects to.
    pub cluster: String,
}

/// What SHOW STATS adds up per database.
#[derive(Default)]
pub struct PoolStats {
    /// Server checkouts released (transactions, or statements between transactions).
    pub xacts: std::sync::atomic::AtomicU64,
    pub queries: std::sync::atomic::AtomicU64,
    pub xact_us: std::sync::atomic::AtomicU64,
    pub wait_us: std::sync::atomic::AtomicU64,
}

/// Statements found stale ("cached plan must not change result type"), by epoch, so every
/// server of the pool closes its copy before next use. Bounded: the oldest are forgotten.
#[derive(Default)]
struct Stale {
    epoch: u64,
    list: std::collections::VecDeque<(u64, Arc<str>)>,
}

const STALE_KEPT: usize = 1024;

impl ServerPool {
    pub fn new(
        name: String,
        mode: PoolMode,
        size: usize,
        min_idle: usize,
        wait: Duration,
        idle: Duration,
        manager: Manager,
    ) -> ServerPool {
        let pool = managed::Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime and no create timeout always builds");
        ServerPool {
            name,
            mode,
            size,
            min_idle,
            idle_timeout: idle,
            wait_timeout: wait,
            pool,
            stale: Mutex::default(),
            pinned: Default::default(),
            clients_active: Default::default(),
            clients_waiting: Default::default(),
            stats: Default::default(),
            max_pinned: (size / 2).max(1),
            cluster: String::new(),
        }
    }

    /// Changes how many server connections the pool may hold (RELOAD). Connections over a
    /// smaller size close as they come back.
    pub fn resize(&self, n: usize) {
        self.pool.resize(n.max(1));
    }

    /// The current maximum number of server connections.
    pub fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    pub fn in_cluster(mut self, name: &str) -> ServerPool {
        self.cluster = name.to_string();
        self
    }

    /// Replaced by RELOAD (see `Pools::retire`).
    pub fn is_retired(&self) -> bool {
        self.pool.manager().servers.is_retired()
    }

    pub fn with_max_pinned(mut self, n: usize) -> ServerPool {
        self.max_pinned = n;
        self
    }

    /// May one more client be pinned?
    pub fn may_pin(&self) -> bool {
        self.pinned.load(std::sync::atomic::Ordering::Relaxed) < self.max_pinned
    }

    pub fn pin(&self) {
        self.pinned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn unpin(&self) {
        self.pinned.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn pinned(&self) -> usize {
        self.pinned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks a statement stale on every server of this pool.
    pub fn invalidate(&self, global: Arc<str>) {
        let mut s = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        s.epoch += 1;
        let e = s.epoch;
        s.list.push_back((e, global));
        if s.list.len() > STALE_KEPT {
            s.list.pop_front();
        }
    }

    /// Statements marked stale after `epoch`, and the current epoch.
    pub fn stale_since(&self, epoch: u64) -> (Vec<Arc<str>>, u64) {
        let s = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        if s.epoch == epoch {
            return (Vec::new(), epoch);
        }
        (s.list.iter().filter(|(e, _)| *e > epoch).map(|(_, g)| g.clone()).collect(), s.epoch)
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.pool.manager().target
    }

    /// The pool's open server connections.
    pub fn servers(&self) -> Vec<Arc<crate::server::registry::ServerSlot>> {
        self.pool.manager().servers.all()
    }

    pub fn defaults(&self) -> Option<&HashMap<String, String>> {
        self.pool.manager().defaults.get()
    }

    /// An idle connection without waiting and without awaiting: no timer armed, no place in
    /// the wait queue, and no future of the caller's to hold its state (deadpool's checkout of
    /// an idle connection completes in one poll: the recycle check does not wait). None when
    /// none is idle or the one found was unusable (then `checkout` waits, or opens one).
    pub fn try_checkout(&self) -> Option<Pooled> {
        if self.pool.status().available == 0 {
            return None;
        }
        let now = Timeouts { wait: Some(Duration::ZERO), create: None, recycle: None };
        let mut get = std::pin::pin!(self.pool.timeout_get(&now));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match get.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(c)) => Some(Pooled::new(c)),
            // Not an idle connection after all (it would be opened): the caller's wait does.
            _ => None,
        }
    }

    /// Waits up to the pool's wait timeout for a connection. Opening a connection that fails
    /// for a transient reason (refused, reset) is tried three times before the error is returned.
    pub async fn checkout(&self) -> Result<Pooled, CheckoutError> {
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let timeouts = Timeouts { wait: Some(left), create: None, recycle: None };
            match self.pool.timeout_get(&timeouts).await {
                Ok(c) => return Ok(Pooled::new(c)),
                Err(PoolError::Timeout(_)) => {
                    return Err(CheckoutError::WaitTimeout {
                        pool: self.name.clone(),
                        waited: self.wait_timeout,
                        size: self.pool.status().max_size,
                    })
                }
                Err(PoolError::Backend(e)) if e.is_transient() && attempts < 3 && left > Duration::from_millis(300) => {
                    // A server restarting or a connection refused: try again within the wait.
                    tracing::warn!(pool = %self.name, error = %e, "server connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(PoolError::Backend(e)) => return Err(e.into()),
                Err(PoolError::Closed) => return Err(CheckoutError::Closed(self.name.clone())),
                Err(PoolError::NoRuntimeSpecified) | Err(PoolError::PostCreateHook(_)) => {
                    return Err(CheckoutError::Closed(self.name.clone()))
                }
            }
        }
    }

    /// Closes connections past their lifetime, and those idle past `idle_timeout` as long as
    /// `min_idle` stay open; then opens connections up to `min_idle`.
    pub async fn maintain(&self) {
        let idle = self.idle_timeout;
        let lifetime = self.pool.manager().lifetime;
        let mut may_close = self.pool.status().available.saturating_sub(self.min_idle);
        self.pool.retain(|_, m| {
            if m.age() >= lifetime {
                return false;
            }
            if m.last_used() >= idle && may_close > 0 {
                may_close -= 1;
                return false;
            }
            true
        });
        let status = self.pool.status();
        if status.available >= self.min_idle {
            return;
        }
        // Checking out hands back idle connections first, so hold `min_idle` of them at once:
        // the idle ones plus as many new ones as are missing.
        let hold = self.min_idle.min(status.available + status.max_size.saturating_sub(status.size));
        let mut opened = Vec::with_capacity(hold);
        for _ in 0..hold {
            match self.pool.timeout_get(&Timeouts { wait: Some(Duration::ZERO), create: None, recycle: None }).await {
                Ok(c) => opened.push(c),
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "could not open a connection for min_idle");
                    break;
                }
            }
        }
    }

    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

/// Drops a checked-out connection instead of returning it (it cannot be trusted).
pub fn discard(mut conn: Pooled) {
    if let Some(c) = conn.0.take() {
        let _ = managed::Object::take(c);
    }
}

/// All pools, created on first use.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<(String, String), Arc<ServerPool>>>,
}

impl Pools {
    pub fn get_or_create(&self, db: &str, user: &str, make: impl FnOnce() -> ServerPool) -> Arc<ServerPool> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((db.to_string(), user.to_string())).or_insert_with(|| Arc::new(make())).clone()
    }

    /// Takes the pools `which` picks out of the map and marks them retired: new logins get
    /// new pools; a retired pool closes its idle connections at once and the others as they
    /// come back, and lives on (empty) while sessions hold it. Returns their names.
    pub fn retire(&self, mut which: impl FnMut(&ServerPool) -> bool) -> Vec<String> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        map.retain(|_, p| {
            if which(p) {
                // Idle connections close now; busy ones when they come back (`Pooled`).
                p.pool.manager().servers.retire();
                p.pool.retain(|_, _| false);
                gone.push(p.name.clone());
                false
            } else {
                true
            }
        });
        gone.sort();
        gone
    }

    pub fn all(&self) -> Vec<Arc<ServerPool>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Forgets pools no session uses and that hold no connection (a client naming ever new
    /// databases or users must not grow the proxy without bound). A later login recreates one.
    pub fn drop_unused(&self) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, p| Arc::strong_count(p) > 1 || p.status().size > 0 || p.pinned() > 0);
        before - map.len()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
