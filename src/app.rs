//! Wires the proxy together: config → TLS, pools, auth source; the listeners and their accept
//! loops; the pool maintenance timer; shutdown. Nothing below imports this module.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::net::tls;
use crate::pool::Pools;
use crate::session::{self, auth::AuthSource, cancel::CancelRegistry, Context};
use crate::wire::{PgError, SqlState};

#[derive(Debug, Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cache: {0}")]
    Cache(String),
}

/// Distinct statement shapes whose read/write classification is kept.
const CLASSIFY_CACHE: usize = 10_000;

/// A running proxy.
pub struct Proxy {
    addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    ctx: Arc<Context>,
}

impl Proxy {
    /// Binds the listeners (port 0 picks a free port) and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, AppError> {
        let config = Arc::new(config);
        let client_tls = match (&config.client_tls.cert_file, &config.client_tls.key_file) {
            (Some(c), Some(k)) => Some(tls::acceptor(c, k)?),
            _ => None,
        };
        let rule_names: Vec<String> = config.cache.rules.iter().map(|r| r.name.clone()).collect();
        let metrics = Arc::new(crate::metrics::Metrics::new(&rule_names, config.top_queries));
        let cache = if config.cache.rules.is_empty() && !config.cache.hints && config.cache.redis_url.is_none() {
            None
        } else {
            let c = crate::cache::Cache::new(&config.cache, metrics.cache.clone()).map_err(AppError::Cache)?;
            Some(Arc::new(c))
        };
        let (stop, stop_rx) = watch::channel(false);
        let clusters = crate::session::clusters::Clusters::start(
            &config,
            stop_rx.clone(),
            metrics.proxy.health_check_failures.clone(),
        )?;
        let ctx = Arc::new(Context {
            live: std::sync::RwLock::new(config.clone()),
            cache,
            metrics,
            clusters,
            resolving: Default::default(),
            settings_key: Default::default(),
            control: Default::default(),
            started: std::time::Instant::now(),
            classifier: std::sync::Mutex::new(crate::route::classify::ClassifyCache::new(CLASSIFY_CACHE)),
            auth: AuthSource::new(&config),
            config: config.clone(),
            pools: Pools::default(),
            cancels: CancelRegistry::default(),
            tls: client_tls,
            next_server_id: Arc::new(AtomicU64::new(1)),
            welcomes: Default::default(),
        });
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let mut addrs_metrics = None;
        let limit = Arc::new(Semaphore::new(config.pool.max_client_connections as usize));
        let per_address = crate::net::admission::PerAddress::new(config.max_connections_per_address);
        for addr in &config.listen {
            let listener = bind(*addr, config.reuse_port).map_err(|source| AppError::Listen { addr: *addr, source })?;
            let local = listener.local_addr().map_err(|source| AppError::Listen { addr: *addr, source })?;
            tracing::info!(addr = %local, "listening");
            addrs.push(local);
            let limits = (limit.clone(), per_address.clone());
            tasks.spawn(accept_loop(listener, ctx.clone(), limits, stop_rx.clone()));
        }
        if let Some(c) = &ctx.cache {
            tasks.spawn(c.store().clone().follow_invalidations(stop_rx.clone()));
        }
        if let Some(addr) = config.metrics_listen {
            let listener = TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr, source })?;
            let local = listener.local_addr().map_err(|source| AppError::Listen { addr, source })?;
            tracing::info!(addr = %local, "serving metrics");
            addrs_metrics = Some(local);
            let m = ctx.clone();
            let render: crate::metrics::http::Render = Arc::new(move || {
                scrape(&m);
                m.metrics.render()
            });
            let r = ctx.clone();
            let ready: crate::metrics::http::Ready = Arc::new(move || {
                let r = r.clone();
                Box::pin(async move { primaries_reachable(&r).await })
            });
            tasks.spawn(crate::metrics::http::serve(listener, render, ready, stop_rx.clone()));
        }
        tasks.spawn(maintain(ctx.clone(), stop_rx));
        Ok(Proxy { addrs, metrics_addr: addrs_metrics, stop, tasks, ctx })
    }

    /// The first listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Stops accepting and closes the pools. Sessions in progress end when their clients do.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        for p in self.ctx.pools.all() {
            p.close();
        }
    }

    /// Stops accepting, lets transactions in progress finish (up to `proxy.shutdown_timeout`;
    /// clients between transactions are told the proxy is going away at their next request),
    /// then closes every client still connected and the pools.
    pub async fn drain(self) {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let _ = self.stop.send(true);
        let control = &self.ctx.control;
        control.draining.store(true, SeqCst);
        let deadline = tokio::time::Instant::now() + self.ctx.live_config().shutdown_timeout;
        loop {
            let notified = control.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = control.busy.load(SeqCst);
            if busy == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(busy, "shutdown_timeout reached with transactions still open; closing their clients");
                break;
            }
        }
        let mut closed = 0;
        for (_, slot) in self.ctx.cancels.clients() {
            if slot.info.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                slot.kill();
                closed += 1;
            }
        }
        tracing::info!(closed, busy = control.busy.load(Relaxed), "drained");
        self.shutdown().await;
    }

    /// Serves until SIGINT (stops at once) or SIGTERM (drains first, see `drain`); SIGHUP
    /// reloads the config file (`session::reload`).
    pub async fn run_until_signalled(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        let drain = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break false,
                _ = self.ctx.control.shutdown.notified() => break true,
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => break true,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {
                    if let Err(e) = crate::session::reload::reload(&self.ctx) {
                        tracing::error!(error = %e, "reload failed; the running configuration is unchanged");
                    }
                }
            }
        };
        tracing::info!(drain, "shutting down");
        if drain {
            self.drain().await;
        } else {
            self.shutdown().await;
        }
    }
}

/// The monitor's login: configured, else the upstream URL's user, else auth_query's, else
/// `postgres` without a password.
/// The limits checked at accept: all clients (`pool.max_client_connections`) and per address.
type Limits = (Arc<Semaphore>, Arc<crate::net::admission::PerAddress>);

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, limits: Limits, mut stop: watch::Receiver<bool>) {
    let (limit, per_address) = limits;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(address_permit) = per_address.admit(peer.ip()) else {
            tracing::warn!(%peer, "client refused: too many connections from its address");
            let message = format!("too many connections from {}", peer.ip());
            tokio::spawn(refuse(tcp, PgError::fatal(SqlState::TOO_MANY_CONNECTIONS, message)));
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let message = "sorry, too many clients already";
            tokio::spawn(refuse(tcp, PgError::fatal(SqlState::TOO_MANY_CONNECTIONS, message)));
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            session::serve(ctx, tcp, peer).await;
            drop((permit, address_permit));
        });
    }
}

/// Answers a client refused at accept with its error, without reading its startup packet.
async fn refuse(mut tcp: tokio::net::TcpStream, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = tcp.write_all(&out).await;
}

async fn maintain(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for pool in ctx.pools.all() {
            pool.maintain().await;
        }
        let dropped = ctx.pools.drop_unused();
        if dropped > 0 {
            tracing::debug!(dropped, "forgot unused pools");
        }
    }
}

/// Gauges read from pools and topologies when `/metrics` is scraped.
fn scrape(ctx: &Context) {
    let m = &ctx.metrics.proxy;
    if let Some(c) = &ctx.cache {
        c.metrics.l1_bytes.set(c.store().l1_bytes() as i64);
    }
    m.server_connections.reset();
    m.server_prepared.reset();
    for pool in ctx.pools.all() {
        let s = pool.status();
        let idle = s.available as i64;
        m.server_connections.with_label_values(&[&pool.name, "idle"]).set(idle);
        m.server_connections.with_label_values(&[&pool.name, "active"]).set(s.size as i64 - idle);
        let prepared: u64 = pool.servers().iter().map(|s| s.prepared()).sum();
        m.server_prepared.with_label_values(&[&pool.name]).set(prepared as i64);
    }
    // Clusters and replicas removed by RELOAD leave no series behind.
    m.replica_lag_bytes.reset();
    m.replica_healthy.reset();
    for (name, top) in &ctx.clusters.topologies() {
        let primary = top.primary_lsn.load(std::sync::atomic::Ordering::Relaxed);
        for (i, r) in top.replicas.iter().enumerate() {
            let replay = r.replay_lsn.load(std::sync::atomic::Ordering::Relaxed);
            let label = i.to_string();
            m.replica_lag_bytes.with_label_values(&[name, &label]).set(primary.saturating_sub(replay) as i64);
            let healthy = r.healthy.load(std::sync::atomic::Ordering::Relaxed);
            m.replica_healthy.with_label_values(&[name, &label]).set(i64::from(healthy));
        }
    }
}

/// Ready when every cluster's primary can be reached: by the monitor's view where a cluster is
/// monitored, else by opening a TCP connection to it (1 s at most).
async fn primaries_reachable(ctx: &Context) -> bool {
    for (name, cluster) in &ctx.live_config().clusters {
        let up = match ctx.clusters.get(name).and_then(|c| c.topology.clone()) {
            Some(top) => !top.primary_down.load(std::sync::atomic::Ordering::Relaxed),
            None => {
                let addr = cluster.primary.addr();
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                )
            }
        };
        if !up {
            return false;
        }
    }
    true
}

/// A client listener; with `reuse_port`, SO_REUSEPORT lets other processes listen on the same
/// port (the kernel spreads new connections over them), so one can drain while another serves.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}
