//! The TOML file as written: serde structs that reject unknown keys. Values that need checking
//! beyond their type are kept `Spanned` so a problem can be reported with its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub tls: RawClientTls,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub prepared: RawPrepared,
    #[serde(default)]
    pub users: Vec<RawUser>,
    pub auth_query: Option<RawAuthQuery>,
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub databases: BTreeMap<String, RawDatabase>,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub redis_url: Option<Spanned<String>>,
    pub l1_max_bytes: Option<Spanned<u64>>,
    pub max_entry_bytes: Option<Spanned<usize>>,
    pub default_ttl: Option<Spanned<DurationValue>>,
    pub redis_timeout: Option<Spanned<DurationValue>>,
    pub breaker_cooldown: Option<Spanned<DurationValue>>,
    pub flight_wait: Option<Spanned<DurationValue>>,
    pub key_prefix: Option<Spanned<String>>,
    pub hints: Option<bool>,
    #[serde(default)]
    pub safe_functions: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub tables: Vec<String>,
    pub regex: Option<Spanned<String>>,
    pub fingerprint: Option<Spanned<String>>,
    pub ttl: Option<Spanned<DurationValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
    pub top_queries: Option<Spanned<u64>>,
    pub slow_query: Option<Spanned<DurationValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub primary_reads: Option<Spanned<String>>,
    pub max_lag_bytes: Option<Spanned<u64>>,
    pub max_lag_ms: Option<Spanned<u64>>,
    pub read_your_writes: Option<bool>,
    pub defer_begin: Option<bool>,
    pub health_interval: Option<Spanned<DurationValue>>,
    pub failover_timeout: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub write_functions: Vec<String>,
    pub monitor_user: Option<Spanned<String>>,
    pub monitor_password: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<Spanned<Listen>>,
    pub auth: Option<Spanned<String>>,
    pub startup_timeout: Option<Spanned<DurationValue>>,
    pub shutdown_timeout: Option<Spanned<DurationValue>>,
    pub reuse_port: Option<bool>,
    pub workers: Option<Spanned<u64>>,
    /// Other PgWeir processes (their own addresses) a CancelRequest for an unknown key goes to.
    #[serde(default)]
    pub peers: Vec<String>,
    pub max_message_size: Option<usize>,
    pub max_connections_per_address: Option<u32>,
    /// Users allowed on the admin console (virtual database `pgweir`).
    #[serde(default)]
    pub admin_users: Vec<String>,
}

/// `listen = "addr"` or `listen = ["addr", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    pub mode: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub mode: Option<Spanned<String>>,
    pub size: Option<Spanned<u32>>,
    pub min_idle: Option<Spanned<u32>>,
    pub max_client_connections: Option<Spanned<u32>>,
    pub max_pinned: Option<Spanned<u32>>,
    pub wait_timeout: Option<Spanned<DurationValue>>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub lifetime: Option<Spanned<DurationValue>>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub query_timeout: Option<Spanned<DurationValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrepared {
    pub server_cache_size: Option<Spanned<usize>>,
    pub max_per_client: Option<Spanned<usize>>,
    pub max_bytes_per_client: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub scram_verifier: Option<Spanned<String>>,
    pub server_user: Option<Spanned<String>>,
    pub server_password: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthQuery {
    pub user: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub primary: Spanned<String>,
    #[serde(default)]
    pub replicas: Vec<Spanned<String>>,
    pub tls: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub cluster: Option<Spanned<String>>,
    pub dbname: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<u32>>,
    pub pool_mode: Option<Spanned<String>>,
    /// Clusters holding shard 0, 1, ... of the sharded tables.
    #[serde(default)]
    pub shards: Vec<Spanned<String>>,
    /// Table (`name`, `schema.name`) or schema (`schema.*`) → cluster.
    #[serde(default)]
    pub federation: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub sharded: Vec<RawShardedTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShardedTable {
    pub table: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(rename = "type")]
    pub key_type: Spanned<String>,
    pub function: Option<Spanned<String>>,
    #[serde(default)]
    pub bounds: Vec<Spanned<Scalar>>,
    #[serde(default)]
    pub values: Vec<Spanned<Vec<Scalar>>>,
}

/// A key value in the file: a number or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Text(String),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Int(v) => v.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// A duration written as seconds (`30`) or with a unit (`"500ms"`, `"30s"`, `"5m"`, `"1h"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        use std::time::Duration;
        match self {
            DurationValue::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationValue::Text(t) => {
                let t = t.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let n: u64 = num.parse().map_err(|_| format!("invalid duration \"{t}\": expected e.g. \"30s\""))?;
                match unit.trim() {
                    "ms" => Ok(Duration::from_millis(n)),
                    "" | "s" => Ok(Duration::from_secs(n)),
                    "m" | "min" => Ok(Duration::from_secs(n * 60)),
                    "h" => Ok(Duration::from_secs(n * 3600)),
                    u => Err(format!("invalid duration unit \"{u}\" in \"{t}\": use ms, s, m or h")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(DurationValue::Seconds(3).parse(), Ok(Duration::from_secs(3)));
        assert_eq!(DurationValue::Text("500ms".into()).parse(), Ok(Duration::from_millis(500)));
        assert_eq!(DurationValue::Text("2m".into()).parse(), Ok(Duration::from_secs(120)));
        assert!(DurationValue::Text("2 weeks".into()).parse().is_err());
        assert!(DurationValue::Text("s".into()).parse().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<RawConfig>("[pool]\nsize = 3\nsise = 4\n").unwrap_err();
        assert!(e.message().contains("sise"), "{}", e.message());
    }
}
