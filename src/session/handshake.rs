//! Connection opening: SSLRequest/GSSENCRequest negotiation, CancelRequest dispatch, the
//! StartupMessage, and then authentication and pool selection (`login`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ClientConn, Context, Login};
use crate::config::{ClientTlsMode, PoolMode, ServerTls};
use crate::net::Stream;
use crate::pool::{Manager, ServerPool};
use crate::server::Target;
use crate::wire::backend::put_negotiate_protocol_version;
use crate::wire::startup::{parse_initial, parse_options, InitialPacket, StartupError, StartupMessage};
use crate::wire::{PgError, SqlState};

/// Reads packets until a StartupMessage arrives, upgrading to TLS on request. Returns None when
/// the connection is finished (a CancelRequest, or an error already reported).
pub(super) async fn negotiate(ctx: &Context, tcp: TcpStream, peer: SocketAddr) -> Option<(ClientConn, StartupMessage)> {
    let mut stream = Stream::Plain(tcp);
    let mut rbuf = BytesMut::with_capacity(1024);
    let tls_mode = if ctx.tls.is_some() { ctx.config.client_tls.mode } else { ClientTlsMode::Disable };
    loop {
        let packet = loop {
            match parse_initial(&rbuf) {
                Ok(Some((p, n))) => {
                    rbuf.advance(n);
                    break p;
                }
                Ok(None) => {}
                Err(e) => {
                    let code = match e {
                        StartupError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
                        _ => SqlState::PROTOCOL_VIOLATION,
                    };
                    reject(&mut stream, PgError::fatal(code, e.to_string())).await;
                    return None;
                }
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        };
        match packet {
            InitialPacket::SslRequest => {
                let Stream::Plain(tcp) = stream else {
                    reject(
                        &mut stream,
                        PgError::fatal(SqlState::PROTOCOL_VIOLATION, "SSLRequest received on an encrypted connection"),
                    )
                    .await;
                    return None;
                };
                let mut tcp = tcp;
                let Some(acceptor) = ctx.tls.as_ref().filter(|_| tls_mode != ClientTlsMode::Disable) else {
                    tcp.write_all(b"N").await.ok()?;
                    stream = Stream::Plain(tcp);
                    continue;
                };
                tcp.write_all(b"S").await.ok()?;
                // Bytes sent before the handshake would be trusted as if encrypted (CVE-2021-23214).
                if !rbuf.is_empty() {
                    let mut s = Stream::Plain(tcp);
                    reject(
                        &mut s,
                        PgError::fatal(SqlState::PROTOCOL_VIOLATION, "received unencrypted data after SSL request"),
                    )
                    .await;
                    return None;
                }
                match acceptor.acceptor.accept(tcp).await {
                    Ok(tls) => stream = Stream::Accepted(Box::new(tls)),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return None;
                    }
                }
            }
            InitialPacket::GssEncRequest => {
                stream.write_all(b"N").await.ok()?;
            }
            InitialPacket::Cancel { pid, secret, forwarded } => {
                if !ctx.cancels.cancel(pid, &secret).await && !forwarded {
                    // Not ours: a peer sharing the port (SO_REUSEPORT) or the load balancer may
                    // hold that client.
                    forward_cancel(ctx, pid, &secret).await;
                }
                return None;
            }
            InitialPacket::Startup(msg) => {
                if tls_mode == ClientTlsMode::Require && !stream.is_tls() {
                    reject(
                        &mut stream,
                        PgError::fatal(
                            SqlState::INVALID_AUTHORIZATION,
                            "pgweir: this proxy accepts only TLS connections",
                        )
                        .with_hint("connect with sslmode=require"),
                    )
                    .await;
                    return None;
                }
                let client = ClientConn { stream, rbuf, wbuf: BytesMut::new(), peer };
                return Some((client, msg));
            }
        }
    }
}

async fn reject(stream: &mut Stream, err: PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Keys of the StartupMessage that are not settings.
fn is_settings_key(k: &str) -> bool {
    !matches!(k, "user" | "database" | "options" | "replication") && !k.starts_with("_pq_.")
}

/// Checks the startup parameters, authenticates, and picks the pool.
/// Where a login goes: a session through the pools, or the admin console.
pub(super) enum Entry {
    Session(Box<Login>),
    Admin(String),
}

pub(super) async fn login(ctx: &Context, client: &mut ClientConn, msg: StartupMessage) -> Result<Entry, PgError> {
    let user = match msg.get("user") {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ))
        }
    };
    let database = msg.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();
    if let Some(r) = msg.get("replication") {
        if !matches!(r.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0") {
            return Err(PgError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                "pgweir does not proxy replication connections",
            )
            .with_hint("connect replication clients directly to the server"));
        }
    }
    let unsupported: Vec<String> =
        msg.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect();
    if msg.minor > 0 || !unsupported.is_empty() {
        put_negotiate_protocol_version(&mut client.wbuf, &unsupported);
    }
    let mut settings: Vec<(String, String)> =
        msg.params.iter().filter(|(k, _)| is_settings_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(opts) = msg.get("options") {
        let parsed = parse_options(opts).map_err(|m| PgError::fatal(SqlState("42601"), m))?;
        settings.extend(parsed);
    }

    let outcome = super::auth::authenticate(ctx, client, &user).await?;
    if database == super::admin::ADMIN_DB {
        return Ok(Entry::Admin(user));
    }

    let who =
        Who { server_user: outcome.server_user, credentials: outcome.credentials, refresh: outcome.refreshes_pool };
    Ok(Entry::Session(Box::new(resolve(ctx, user, database, settings, who)?)))
}

/// Whom a login's pools connect as (kept so a session can find its pools again).
#[derive(Clone)]
pub struct Who {
    pub server_user: String,
    pub credentials: crate::server::Credentials,
    /// A SCRAM pass-through login: the pools take its keys.
    pub refresh: bool,
}

/// The pools and routing of an authenticated login, under the configuration as last reloaded.
/// Run again by a session whose pools were retired by RELOAD.
pub(super) fn resolve(
    ctx: &Context,
    user: String,
    database: String,
    settings: Vec<(String, String)>,
    who: Who,
) -> Result<Login, PgError> {
    let _stable = ctx.resolving.read().unwrap_or_else(|p| p.into_inner());
    let config = ctx.live_config();
    let route = config.databases.get(&database);
    let cluster_name = route.map(|r| r.cluster.clone()).unwrap_or_else(|| config.default_cluster.clone());
    // Pool modes change only with a restart: the ones the proxy started with.
    // (A database added by RELOAD takes its own.)
    let mode = match ctx.config.databases.get(&database) {
        Some(started) => started.pool_mode,
        None => route.and_then(|r| r.pool_mode),
    }
    .unwrap_or(ctx.config.pool.mode);
    let size = super::reload::pool_size(&config, &database, &user);
    let server_db = route.and_then(|r| r.dbname.clone()).unwrap_or_else(|| database.clone());
    let base = LoginSpec {
        user: &user,
        database: &database,
        server_user: &who.server_user,
        server_db: &server_db,
        credentials: &who.credentials,
        refresh: who.refresh,
        mode,
        size,
    };
    let (shards, home) = match route.and_then(|r| r.layout.clone()) {
        Some(layout) => {
            let s = super::sharded::ShardLogin::new(ctx, &base, layout)?;
            let home = s.targets[s.current].clone();
            (Some(Box::new(s)), home)
        }
        None => (None, target_pools(ctx, &base, &cluster_name, false)?),
    };
    Ok(Login {
        user,
        database,
        cache_db: home.cache_db,
        pool: home.pool,
        replicas: home.replicas,
        topology: home.topology,
        mode,
        settings,
        shards,
        who,
    })
}

/// What every pool of one login shares.
pub(super) struct LoginSpec<'a> {
    pub user: &'a str,
    /// The client's database name (pools are keyed by it).
    pub database: &'a str,
    pub server_user: &'a str,
    /// The server-side database, unless a cluster's URL names one (sharded databases).
    pub server_db: &'a str,
    pub credentials: &'a crate::server::Credentials,
    /// A SCRAM pass-through login: the pools take its keys.
    pub refresh: bool,
    pub mode: PoolMode,
    pub size: usize,
}

/// The pools of one cluster for a login. `own_db`: the cluster's URL may name the server-side
/// database (a shard or federated cluster), and pools are keyed by the cluster as well.
pub(super) fn target_pools(
    ctx: &Context,
    base: &LoginSpec<'_>,
    cluster_name: &str,
    own_db: bool,
) -> Result<super::TargetPools, PgError> {
    let state = ctx
        .clusters
        .get(cluster_name)
        .ok_or_else(|| PgError::fatal(SqlState::INTERNAL_ERROR, format!("pgweir: no cluster \"{cluster_name}\"")))?;
    let cluster = &state.config;
    let server_db = match (&cluster.primary.dbname, own_db) {
        (Some(d), true) => d.as_str(),
        _ => base.server_db,
    };
    let spec = PoolSpec {
        cluster: &state,
        user: base.user,
        server_user: base.server_user,
        server_db,
        credentials: base.credentials,
        mode: base.mode,
        size: base.size,
    };
    let key = if own_db { format!("{}#{}", base.database, cluster.name) } else { base.database.to_string() };
    let pool = pool_for(ctx, &spec, &cluster.primary, key.clone())?;
    let mut replicas = Vec::new();
    if base.mode == PoolMode::Transaction {
        for (i, ep) in cluster.replicas.iter().enumerate() {
            replicas.push(pool_for(ctx, &spec, ep, format!("{key}@replica{i}"))?);
        }
    }
    // The newest credentials win: a SCRAM pass-through login refreshes the pools' keys.
    if base.refresh {
        for p in std::iter::once(&pool).chain(&replicas) {
            if let Ok(mut c) = p.target().credentials.lock() {
                *c = base.credentials.clone();
            }
        }
    }
    let topology = state.topology.clone().filter(|_| !replicas.is_empty());
    let cache_db = format!("{}/{}", cluster.name, server_db);
    Ok(super::TargetPools { pool, replicas, topology, cache_db })
}

/// What the pools of one login share.
struct PoolSpec<'a> {
    cluster: &'a super::clusters::ClusterState,
    user: &'a str,
    server_user: &'a str,
    server_db: &'a str,
    credentials: &'a crate::server::Credentials,
    mode: PoolMode,
    size: usize,
}

/// The pool for one member of the cluster, created on first use; `key` names it among pools.
fn pool_for(
    ctx: &Context,
    spec: &PoolSpec<'_>,
    ep: &crate::config::Endpoint,
    key: String,
) -> Result<Arc<ServerPool>, PgError> {
    let cluster = &spec.cluster.config;
    let tls = match cluster.tls {
        ServerTls::Disable => None,
        ServerTls::Verify(_) => {
            let connector = spec.cluster.tls.clone();
            let name = crate::net::tls::server_name(&ep.host).ok();
            match (connector, name) {
                (Some(c), Some(n)) => Some((c, n)),
                // Never fall back to plaintext when TLS was asked for.
                _ => {
                    return Err(PgError::fatal(
                        SqlState::CONNECTION_FAILURE,
                        format!("pgweir: TLS to cluster \"{}\" is not usable (host {})", cluster.name, ep.host),
                    ))
                }
            }
        }
    };
    let user = spec.user;
    Ok(ctx.pools.get_or_create(&key, user, || {
        let config = ctx.live_config();
        let p = &config.pool;
        let target = Target {
            host: ep.host.clone(),
            port: ep.port,
            user: spec.server_user.to_string(),
            dbname: spec.server_db.to_string(),
            credentials: std::sync::Mutex::new(spec.credentials.clone()),
            tls,
            connect_timeout: p.connect_timeout,
            next_id: Arc::clone(&ctx.next_server_id),
            prepared_cap: config.prepared.server_cache_size,
        };
        let manager = Manager::new(Arc::new(target), p.lifetime);
        ServerPool::new(
            format!("{key}/{user}"),
            spec.mode,
            spec.size,
            p.min_idle as usize,
            p.wait_timeout,
            p.idle_timeout,
            manager,
        )
        .with_max_pinned(p.max_pinned.map(|n| n as usize).unwrap_or((spec.size / 2).max(1)))
        .in_cluster(&cluster.name)
    }))
}

/// Passes a CancelRequest whose key is not this process's to every `proxy.peers` address.
async fn forward_cancel(ctx: &Context, pid: i32, secret: &[u8]) {
    let peers = &ctx.config.peers;
    if peers.is_empty() {
        return;
    }
    let mut packet = BytesMut::new();
    crate::wire::startup::encode_forwarded_cancel(pid, secret, &mut packet);
    let sends = peers.iter().map(|peer| {
        let packet = &packet;
        async move {
            let send = async {
                let mut s = TcpStream::connect(peer.as_str()).await?;
                s.write_all(packet).await?;
                s.shutdown().await
            };
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(2), send)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")))
            {
                tracing::debug!(peer = %peer, error = %e, "passing a cancel request to a peer failed");
            }
        }
    });
    futures_util::future::join_all(sends).await;
}
