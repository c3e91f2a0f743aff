//! Configuration: the TOML file (see `raw`), command-line overrides, `${ENV}` substitution, and
//! the validated `Config` the rest of the proxy reads. Every problem is reported with the key
//! and, for the file, the line it sits on. Nothing here opens a socket.

pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;
use thiserror::Error;
use toml::Spanned;

pub use crate::net::tls::Verify;

/// Where the upstream goes when nothing is configured.
pub const DEFAULT_UPSTREAM: &str = "postgres://localhost:5432";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
pub const DEFAULT_CLUSTER: &str = "default";

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{origin}: {key}: {message}")]
pub struct ConfigError {
    /// "FILE:LINE", "FILE" or "command line".
    pub origin: String,
    pub key: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

impl PoolMode {
    pub fn parse(s: &str) -> Result<PoolMode, String> {
        match s {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            _ => Err(format!("unknown pool mode \"{s}\": use session or transaction")),
        }
    }
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    Md5,
    ScramSha256,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Result<AuthMethod, String> {
        match s {
            "trust" => Ok(AuthMethod::Trust),
            "md5" => Ok(AuthMethod::Md5),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            _ => Err(format!("unknown auth method \"{s}\": use trust, md5 or scram-sha-256")),
        }
    }
}

/// TLS towards clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTlsMode {
    Disable,
    Allow,
    Require,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// TLS towards a server (libpq's sslmode names; `prefer` is not offered: choose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerTls {
    Disable,
    Verify(Verify),
}

/// One PostgreSQL server address, from a `postgres://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(s).map_err(|e| format!("invalid URL \"{s}\": {e}"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!("URL \"{s}\" must start with postgres://"));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("URL \"{s}\" has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let decode = |v: &str| {
            url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        let dbname = url.path().trim_start_matches('/');
        let dbname = (!dbname.is_empty()).then(|| decode(dbname));
        Ok(Endpoint { host, port: url.port().unwrap_or(5432), user, password, dbname })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub primary: Endpoint,
    pub replicas: Vec<Endpoint>,
    pub tls: ServerTls,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: Option<String>,
    pub scram_verifier: Option<String>,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub pool_size: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthQuery {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub query: String,
}

pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub cluster: String,
    pub dbname: Option<String>,
    pub pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    /// Spread over several clusters (sharding and/or federation).
    pub layout: Option<std::sync::Arc<crate::shard::Layout>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: u32,
    pub min_idle: u32,
    pub max_client_connections: u32,
    /// Clients per pool that may be pinned to a server; None: half the pool size.
    pub max_pinned: Option<u32>,
    pub wait_timeout: Duration,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub connect_timeout: Duration,
    /// A request whose server sends nothing for this long is ended as a lost connection
    /// (`pool.query_timeout`; None = never).
    pub query_timeout: Option<Duration>,
}

/// Whether the primary also serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryReads {
    /// Reads go only to replicas; with none usable they wait for one... and after the wait
    /// timeout fail. (Reads inside write transactions still use the primary.)
    Never,
    /// Reads go to replicas; to the primary when no replica is usable.
    Fallback,
    /// The primary takes reads like one more replica.
    Always,
}

/// Read/write splitting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub primary_reads: PrimaryReads,
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
    pub read_your_writes: bool,
    /// A plain BEGIN is answered by the proxy and the transaction's member chosen by its first
    /// statement (a read goes to a replica, where any later write fails with 25006).
    pub defer_begin: bool,
    pub health_interval: Duration,
    /// How long a write waits for a promoted primary when the primary is down.
    pub failover_timeout: Duration,
    /// Functions that write (besides the built-in list): calls route to the primary.
    pub write_functions: Vec<String>,
    /// Who the lag monitor logs in as (default: the upstream URL's user, else auth_query's).
    pub monitor_user: Option<String>,
    pub monitor_password: Option<String>,
}

/// Named prepared statements in transaction mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedSettings {
    /// Statements kept per server connection (least recently used ones are closed).
    pub server_cache_size: usize,
    /// Statements one client may hold.
    pub max_per_client: usize,
    /// Bytes of statement text one client may hold.
    pub max_bytes_per_client: usize,
}

/// One cache rule: a statement is cached when it matches every criterion the rule gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRule {
    /// The metrics label.
    pub name: String,
    /// Reads at least one of these tables (unqualified, as folded by PostgreSQL).
    pub tables: Vec<String>,
    pub regex: Option<String>,
    /// The literal-stripping fingerprint (`route::classify::fingerprint`).
    pub fingerprint: Option<u64>,
    pub ttl: Duration,
}

/// The result cache (off unless rules are given or hints are allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub rules: Vec<CacheRule>,
    /// Honour `/* pgweir: cache ttl=.. */` comments.
    pub hints: bool,
    /// Redis (L2 and table versions shared by a fleet); None: L1 only.
    pub redis_url: Option<String>,
    pub l1_bytes: u64,
    pub max_entry_bytes: usize,
    pub default_ttl: Duration,
    pub redis_timeout: Duration,
    pub breaker_cooldown: Duration,
    pub flight_wait: Duration,
    pub prefix: String,
    pub safe_functions: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub auth: AuthMethod,
    pub startup_timeout: Duration,
    /// On SIGTERM, how long transactions in progress may take before their clients are cut.
    pub shutdown_timeout: Duration,
    /// Listen with SO_REUSEPORT, so another process can share the port (fleet restarts).
    pub reuse_port: bool,
    /// Runtime worker threads (`proxy.workers`; 0 = one per core).
    pub workers: usize,
    /// Addresses (`host:port`) of the other PgWeir processes sharing clients with this one.
    pub peers: Vec<String>,
    pub max_message_size: usize,
    /// Client connections one IP address may hold at once (`proxy.max_connections_per_address`;
    /// 0 = no limit).
    pub max_connections_per_address: usize,
    /// Users who may connect to the admin console (database `pgweir`).
    pub admin_users: Vec<String>,
    pub client_tls: ClientTls,
    pub pool: PoolSettings,
    pub prepared: PreparedSettings,
    pub users: Vec<User>,
    /// How unknown users are looked up; `None` means only `users` may log in.
    pub auth_query: Option<AuthQuery>,
    pub clusters: BTreeMap<String, Cluster>,
    pub default_cluster: String,
    pub databases: BTreeMap<String, Database>,
    pub routing: Routing,
    pub cache: CacheSettings,
    /// Where `/metrics` is served (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// Statement shapes SHOW QUERIES keeps (`metrics.top_queries`, 0 = off).
    pub top_queries: usize,
    /// Requests slower than this are logged (`metrics.slow_query`, zero = off).
    pub slow_query: Duration,
    /// The file and command-line overrides this was read from (RELOAD and SIGHUP read them
    /// again); None when built from text.
    pub origin: Option<(PathBuf, Overrides)>,
}

impl Config {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }
}

/// Settings given on the command line; each one replaces the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub upstream: Option<String>,
    pub replicas: Vec<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
    pub auth: Option<String>,
}

/// Reads, overrides and validates. `path` None means no file (all defaults).
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (text, name) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                origin: p.display().to_string(),
                key: "(file)".into(),
                message: e.to_string(),
            })?;
            (text, p.display().to_string())
        }
        None => (String::new(), "(no file)".to_string()),
    };
    let mut c = from_str(&text, &name, overrides)?;
    c.origin = path.map(|p| (p.to_path_buf(), overrides.clone()));
    Ok(c)
}

/// Parses and validates config text; `name` is used in error messages.
pub fn from_str(text: &str, name: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let origin = match e.span() {
            Some(span) => format!("{name}:{}", line_of(text, span.start)),
            None => name.to_string(),
        };
        let message = e.message().trim().to_string();
        let key = message.split('`').nth(1).map(str::to_string).unwrap_or_else(|| "(syntax)".to_string());
        ConfigError { origin, key, message }
    })?;
    Validator { text, name, env: &|k| std::env::var(k).ok() }.validate(raw, overrides)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

mod sharding;
mod validate;
use validate::Validator;
