//! One client session, from the first byte to the last: TLS and startup negotiation
//! (`handshake`), authentication (`auth`), choosing the pool, the parameter set the client sees
//! (`params`), and the relay loop that checks a server out at the first message of a
//! transaction and gives it back when ReadyForQuery says idle (`relay`; a server lost or silent
//! under its requests in `lost`). Cancel keys live in
//! `cancel`. Sharded and federated databases are routed per request (`sharded`; multi-shard
//! requests in `scatter`, `merge_stream`, `copy_split`). The admin console (`admin`), PAUSE /
//! KILL / drain state (`control`), RELOAD (`reload`) and the session's own state reporting
//! (`presence`) sit beside it. A session never outlives its client and never leaves state on a
//! pooled server.

pub mod admin;
pub mod auth;
mod cached;
pub mod cancel;
pub mod clusters;
pub mod control;
mod copy_split;
mod handshake;
mod invalidate;
mod lost;
mod merge_stream;
pub mod params;
pub mod plan;
mod presence;
mod proto;
mod proto_stmts;
mod pump;
mod relay;
pub mod reload;
mod retry;
mod routing;
mod scatter;
mod shapes;
mod sharded;
pub mod state;
pub mod stmts;
mod timing;
pub mod welcome;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{Config, PoolMode};
use crate::net::Stream;
use crate::pool::Pools;
use crate::wire::{PgError, SqlState};

/// Everything a session needs from the running proxy (built by `app`).
pub struct Context {
    /// The configuration the proxy started with (what cannot change without a restart).
    pub config: Arc<Config>,
    /// The configuration as last reloaded (pool sizes, admin users, shutdown timeout).
    pub live: std::sync::RwLock<Arc<Config>>,
    pub pools: Pools,
    pub cancels: cancel::CancelRegistry,
    pub tls: Option<crate::net::tls::ClientTls>,
    pub auth: auth::AuthSource,
    pub next_server_id: Arc<AtomicU64>,
    pub welcomes: welcome::WelcomeCache,
    /// The clusters as running now: settings, TLS connectors, monitored topologies.
    pub clusters: clusters::Clusters,
    /// Held (read) while a login resolves its pools, and (write) while RELOAD changes them.
    pub resolving: std::sync::RwLock<()>,
    /// The key of clients' settings shapes (`ClientParams::shape`), random per process.
    pub settings_key: std::collections::hash_map::RandomState,
    /// PAUSE / RESUME from the admin console.
    pub control: control::Control,
    /// When the proxy started (SHOW STATS averages).
    pub started: std::time::Instant,
    /// Read/write classifications by statement shape, shared by all sessions.
    pub classifier: std::sync::Mutex<crate::route::classify::ClassifyCache>,
    /// The result cache (None: nothing is cached and no write needs tracking).
    pub cache: Option<Arc<crate::cache::Cache>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Context {
    /// The configuration as last reloaded.
    pub fn live_config(&self) -> Arc<Config> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The client's socket with its read buffer and pending output.
pub struct ClientConn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub peer: SocketAddr,
}

impl ClientConn {
    /// Writes all pending output.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }

    /// Sends a FATAL error and closes the connection.
    pub async fn fatal(&mut self, err: PgError) {
        tracing::debug!(peer = %self.peer, error = %err, "closing client");
        err.encode(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Serves one accepted client connection to the end.
pub async fn serve(ctx: Arc<Context>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let timeout = ctx.config.startup_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let too_slow = || {
        PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("pgweir: startup and authentication did not complete within {timeout:?}"),
        )
    };
    let (mut client, startup) =
        match tokio::time::timeout_at(deadline, Box::pin(handshake::negotiate(&ctx, tcp, peer))).await {
            Err(_) => return,
            Ok(None) => return,
            Ok(Some(x)) => x,
        };
    let login = match tokio::time::timeout_at(deadline, Box::pin(handshake::login(&ctx, &mut client, startup))).await {
        Err(_) => {
            ctx.metrics.proxy.login_failures.inc();
            return client.fatal(too_slow()).await;
        }
        Ok(Err(err)) => {
            ctx.metrics.proxy.login_failures.inc();
            ctx.metrics.proxy.error(Some(err.code.0));
            return client.fatal(err).await;
        }
        Ok(Ok(handshake::Entry::Admin(user))) => return Box::pin(admin::serve(&ctx, client, user)).await,
        Ok(Ok(handshake::Entry::Session(login))) => *login,
    };
    ctx.metrics.proxy.logins.inc();
    let guard = ctx.cancels.register();
    *guard.slot.info.lock().unwrap_or_else(|p| p.into_inner()) = Some(control::ClientInfo {
        user: login.user.clone(),
        database: login.database.clone(),
        application_name: login
            .settings
            .iter()
            .rev()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        peer,
        local,
        connected: std::time::SystemTime::now(),
        tls: matches!(client.stream, crate::net::Stream::Accepted(_)),
    });
    use tracing::Instrument;
    // Everything logged while the session runs names its client (SHOW CLIENTS' id) and login.
    let span = tracing::info_span!("session", client = guard.pid, user = %login.user, db = %login.database, %peer);
    let mut session = relay::Session::new(&ctx, client, login, guard);
    session.run().instrument(span).await;
}

/// The outcome of startup + authentication: who the client is and where it goes.
pub struct Login {
    pub user: String,
    pub database: String,
    /// The physical database (cluster and server-side name) whose table versions the result
    /// cache uses: every client database name mapped onto it shares them.
    pub cache_db: String,
    pub pool: Arc<crate::pool::ServerPool>,
    /// Pools of the cluster's replicas (transaction mode), in the cluster's order.
    pub replicas: Vec<Arc<crate::pool::ServerPool>>,
    /// The cluster's members as monitored (set when there are replicas to route reads to).
    pub topology: Option<Arc<crate::pool::topology::Topology>>,
    pub mode: PoolMode,
    /// Settings the client asked for at startup (parameters and `options`), in order.
    pub settings: Vec<(String, String)>,
    /// A sharded or federated database: every target's pools; the fields above hold the
    /// current target's.
    pub shards: Option<Box<sharded::ShardLogin>>,
    /// Whom the pools connect as.
    pub who: handshake::Who,
}

impl Login {
    /// RELOAD replaced one of its pools.
    pub fn retired(&self) -> bool {
        let target = |pool: &crate::pool::ServerPool, replicas: &[Arc<crate::pool::ServerPool>]| {
            pool.is_retired() || replicas.iter().any(|r| r.is_retired())
        };
        target(&self.pool, &self.replicas)
            || self.shards.as_ref().is_some_and(|s| s.targets.iter().any(|t| target(&t.pool, &t.replicas)))
    }
}

/// The pools of one cluster, as a login uses them.
#[derive(Clone)]
pub struct TargetPools {
    pub pool: Arc<crate::pool::ServerPool>,
    pub replicas: Vec<Arc<crate::pool::ServerPool>>,
    pub topology: Option<Arc<crate::pool::topology::Topology>>,
    pub cache_db: String,
}
