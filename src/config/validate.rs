//! Turns `RawConfig` plus command-line overrides into a checked `Config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{DurationValue, Listen, RawConfig};
use super::*;

pub(super) struct Validator<'a> {
    pub text: &'a str,
    pub name: &'a str,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

const CLI: &str = "command line";

impl Validator<'_> {
    pub(super) fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let origin = match span {
            Some(s) => format!("{}:{}", self.name, line_of(self.text, s.start)),
            None => CLI.to_string(),
        };
        Err(ConfigError { origin, key: key.to_string(), message: message.into() })
    }

    /// Replaces `${NAME}` with the environment variable's value.
    fn expand(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                return self.err(Some(v.span()), key, "unterminated ${ in value");
            };
            let var = &rest[start + 2..start + end];
            match (self.env)(var) {
                Some(val) => out.push_str(&val),
                None => return self.err(Some(v.span()), key, format!("environment variable {var} is not set")),
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn duration(
        &self,
        v: &Option<Spanned<DurationValue>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(d) => match d.get_ref().parse() {
                Ok(v) => Ok(v),
                Err(m) => self.err(Some(d.span()), key, m),
            },
        }
    }

    pub fn validate(&self, raw: RawConfig, o: &Overrides) -> Result<Config, ConfigError> {
        // listen
        let listen: Vec<SocketAddr> = if !o.listen.is_empty() {
            o.listen
                .iter()
                .map(|a| a.parse().or_else(|_| self.err(None, "--listen", format!("invalid address \"{a}\""))))
                .collect::<Result<_, _>>()?
        } else if let Some(l) = &raw.proxy.listen {
            let list = match l.get_ref() {
                Listen::One(a) => vec![a.clone()],
                Listen::Many(v) => v.clone(),
            };
            if list.is_empty() {
                return self.err(Some(l.span()), "proxy.listen", "needs at least one address");
            }
            list.iter()
                .map(|a| {
                    a.parse().or_else(|_| {
                        self.err(Some(l.span()), "proxy.listen", format!("invalid address \"{a}\" (want host:port)"))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            vec![DEFAULT_LISTEN.parse().expect("default listen address")]
        };

        let auth = match (&o.auth, &raw.proxy.auth) {
            (Some(a), _) => AuthMethod::parse(a).or_else(|m| self.err(None, "--auth", m))?,
            (None, Some(a)) => AuthMethod::parse(a.get_ref()).or_else(|m| self.err(Some(a.span()), "proxy.auth", m))?,
            (None, None) => AuthMethod::ScramSha256,
        };
        let startup_timeout =
            self.duration(&raw.proxy.startup_timeout, "proxy.startup_timeout", Duration::from_secs(15))?;
        let shutdown_timeout =
            self.duration(&raw.proxy.shutdown_timeout, "proxy.shutdown_timeout", Duration::from_secs(30))?;
        let max_message_size = raw.proxy.max_message_size.unwrap_or(1 << 30);

        // client TLS
        let client_tls = {
            let t = &raw.tls;
            let mode = match &t.mode {
                None => {
                    if t.cert_file.is_some() {
                        ClientTlsMode::Allow
                    } else {
                        ClientTlsMode::Disable
                    }
                }
                Some(m) => match m.get_ref().as_str() {
                    "disable" => ClientTlsMode::Disable,
                    "allow" => ClientTlsMode::Allow,
                    "require" => ClientTlsMode::Require,
                    other => {
                        return self.err(
                            Some(m.span()),
                            "tls.mode",
                            format!("unknown mode \"{other}\": use disable, allow or require"),
                        )
                    }
                },
            };
            let cert_file =
                t.cert_file.as_ref().map(|v| self.expand(v, "tls.cert_file")).transpose()?.map(PathBuf::from);
            let key_file = t.key_file.as_ref().map(|v| self.expand(v, "tls.key_file")).transpose()?.map(PathBuf::from);
            if mode != ClientTlsMode::Disable && (cert_file.is_none() || key_file.is_none()) {
                let span = t.mode.as_ref().map(|m| m.span());
                return self.err(span, "tls.mode", "TLS needs both tls.cert_file and tls.key_file");
            }
            ClientTls { mode, cert_file, key_file }
        };

        // pool
        let p = &raw.pool;
        let mode = match (&o.pool_mode, &p.mode) {
            (Some(m), _) => PoolMode::parse(m).or_else(|e| self.err(None, "--pool-mode", e))?,
            (None, Some(m)) => PoolMode::parse(m.get_ref()).or_else(|e| self.err(Some(m.span()), "pool.mode", e))?,
            (None, None) => PoolMode::Transaction,
        };
        let size = match (o.pool_size, &p.size) {
            (Some(0), _) => return self.err(None, "--pool-size", "must be at least 1"),
            (Some(s), _) => s,
            (None, Some(s)) if *s.get_ref() == 0 => return self.err(Some(s.span()), "pool.size", "must be at least 1"),
            (None, Some(s)) => *s.get_ref(),
            (None, None) => 20,
        };
        let min_idle = p.min_idle.as_ref().map(|v| *v.get_ref()).unwrap_or(0);
        if let Some(m) = &p.min_idle {
            if *m.get_ref() > size {
                return self.err(
                    Some(m.span()),
                    "pool.min_idle",
                    format!("{} is larger than the pool size {size}", m.get_ref()),
                );
            }
        }
        let pool = PoolSettings {
            mode,
            size,
            min_idle,
            max_client_connections: p.max_client_connections.as_ref().map(|v| *v.get_ref()).unwrap_or(10_000),
            max_pinned: p.max_pinned.as_ref().map(|v| *v.get_ref()),
            wait_timeout: self.duration(&p.wait_timeout, "pool.wait_timeout", Duration::from_secs(120))?,
            idle_timeout: self.duration(&p.idle_timeout, "pool.idle_timeout", Duration::from_secs(600))?,
            lifetime: self.duration(&p.lifetime, "pool.lifetime", Duration::from_secs(3600))?,
            connect_timeout: self.duration(&p.connect_timeout, "pool.connect_timeout", Duration::from_secs(5))?,
            query_timeout: Some(self.duration(&p.query_timeout, "pool.query_timeout", Duration::ZERO)?)
                .filter(|d| !d.is_zero()),
        };

        let positive = |v: &Option<Spanned<usize>>, key: &str, default: usize| -> Result<usize, ConfigError> {
            match v {
                None => Ok(default),
                Some(x) if *x.get_ref() == 0 => self.err(Some(x.span()), key, "must be at least 1"),
                Some(x) => Ok(*x.get_ref()),
            }
        };
        let prepared = PreparedSettings {
            server_cache_size: positive(&raw.prepared.server_cache_size, "prepared.server_cache_size", 256)?,
            max_per_client: positive(&raw.prepared.max_per_client, "prepared.max_per_client", 10_000)?,
            max_bytes_per_client: positive(
                &raw.prepared.max_bytes_per_client,
                "prepared.max_bytes_per_client",
                16 << 20,
            )?,
        };

        // users
        let mut users: Vec<User> = Vec::new();
        for (i, u) in raw.users.iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            let name = u.name.get_ref().clone();
            if name.is_empty() {
                return self.err(Some(u.name.span()), &key("name"), "must not be empty");
            }
            if users.iter().any(|x| x.name == name) {
                return self.err(Some(u.name.span()), &key("name"), format!("user \"{name}\" is listed twice"));
            }
            let password = u.password.as_ref().map(|v| self.expand(v, &key("password"))).transpose()?;
            let scram_verifier =
                u.scram_verifier.as_ref().map(|v| self.expand(v, &key("scram_verifier"))).transpose()?;
            if let (Some(v), Some(raw_v)) = (&scram_verifier, &u.scram_verifier) {
                if crate::auth::scram::ScramSecret::parse(v).is_none() {
                    return self.err(
                        Some(raw_v.span()),
                        &key("scram_verifier"),
                        "not a SCRAM-SHA-256 verifier (want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
                    );
                }
            }
            users.push(User {
                name,
                password,
                scram_verifier,
                server_user: u.server_user.as_ref().map(|v| self.expand(v, &key("server_user"))).transpose()?,
                server_password: u
                    .server_password
                    .as_ref()
                    .map(|v| self.expand(v, &key("server_password")))
                    .transpose()?,
                pool_size: u.pool_size.as_ref().map(|v| *v.get_ref()),
            });
        }

        // clusters
        let mut clusters = BTreeMap::new();
        for (name, c) in &raw.clusters {
            let key = |k: &str| format!("clusters.{name}.{k}");
            let endpoint = |v: &Spanned<String>, k: &str| -> Result<Endpoint, ConfigError> {
                let s = self.expand(v, &key(k))?;
                Endpoint::parse(&s).or_else(|m| self.err(Some(v.span()), &key(k), m))
            };
            let primary = endpoint(&c.primary, "primary")?;
            let replicas = c.replicas.iter().map(|r| endpoint(r, "replicas")).collect::<Result<Vec<_>, _>>()?;
            let tls = match &c.tls {
                None => ServerTls::Disable,
                Some(t) => parse_server_tls(t.get_ref()).or_else(|m| self.err(Some(t.span()), &key("tls"), m))?,
            };
            let ca_file = c.ca_file.as_ref().map(|v| self.expand(v, &key("ca_file"))).transpose()?.map(PathBuf::from);
            clusters.insert(name.clone(), Cluster { name: name.clone(), primary, replicas, tls, ca_file });
        }
        // --upstream / --replica define (or replace) the default cluster.
        if let Some(u) = &o.upstream {
            let primary = Endpoint::parse(u).or_else(|m| self.err(None, "--upstream", m))?;
            let c = clusters.entry(DEFAULT_CLUSTER.to_string()).or_insert_with(|| Cluster {
                name: DEFAULT_CLUSTER.into(),
                primary: primary.clone(),
                replicas: vec![],
                tls: ServerTls::Disable,
                ca_file: None,
            });
            c.primary = primary;
        }
        if clusters.is_empty() {
            let primary = Endpoint::parse(DEFAULT_UPSTREAM).expect("default upstream");
            clusters.insert(
                DEFAULT_CLUSTER.into(),
                Cluster {
                    name: DEFAULT_CLUSTER.into(),
                    primary,
                    replicas: vec![],
                    tls: ServerTls::Disable,
                    ca_file: None,
                },
            );
        }
        let default_cluster = if clusters.contains_key(DEFAULT_CLUSTER) {
            DEFAULT_CLUSTER.to_string()
        } else {
            clusters.keys().next().cloned().unwrap_or_default()
        };
        if !o.replicas.is_empty() {
            let replicas = o
                .replicas
                .iter()
                .map(|r| Endpoint::parse(r).or_else(|m| self.err(None, "--replica", m)))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(c) = clusters.get_mut(&default_cluster) {
                c.replicas = replicas;
            }
        }

        // databases
        let mut databases = BTreeMap::new();
        for (name, d) in &raw.databases {
            let key = |k: &str| format!("databases.{name}.{k}");
            let cluster = match &d.cluster {
                Some(c) if !clusters.contains_key(c.get_ref()) => {
                    return self.err(Some(c.span()), &key("cluster"), format!("no cluster named \"{}\"", c.get_ref()));
                }
                Some(c) => c.get_ref().clone(),
                None => default_cluster.clone(),
            };
            let pool_mode = match &d.pool_mode {
                None => None,
                Some(m) => {
                    Some(PoolMode::parse(m.get_ref()).or_else(|e| self.err(Some(m.span()), &key("pool_mode"), e))?)
                }
            };
            let layout = self.layout(name, d, &clusters, &cluster)?;
            if layout.is_some() && pool_mode.unwrap_or(pool.mode) != PoolMode::Transaction {
                return self.err(
                    d.pool_mode.as_ref().map(|m| m.span()),
                    &key("pool_mode"),
                    "a sharded or federated database needs pool_mode = \"transaction\" (each transaction is routed)",
                );
            }
            databases.insert(
                name.clone(),
                Database {
                    cluster,
                    dbname: d.dbname.as_ref().map(|v| v.get_ref().clone()),
                    pool_size: d.pool_size.as_ref().map(|v| *v.get_ref()),
                    pool_mode,
                    layout,
                },
            );
        }

        let auth_query = match &raw.auth_query {
            Some(a) => Some(AuthQuery {
                user: self.expand(&a.user, "auth_query.user")?,
                password: a.password.as_ref().map(|v| self.expand(v, "auth_query.password")).transpose()?,
                database: a.database.as_ref().map(|v| v.get_ref().clone()).unwrap_or_else(|| "postgres".into()),
                query: a.query.as_ref().map(|v| v.get_ref().clone()).unwrap_or_else(|| DEFAULT_AUTH_QUERY.into()),
            }),
            // With no user list, a sidecar looks users up through the upstream's own user.
            None if users.is_empty() && auth != AuthMethod::Trust => {
                let primary = &clusters[&default_cluster].primary;
                Some(AuthQuery {
                    user: primary.user.clone().unwrap_or_else(|| "postgres".into()),
                    password: primary.password.clone(),
                    database: "postgres".into(),
                    query: DEFAULT_AUTH_QUERY.into(),
                })
            }
            None => None,
        };

        let r = &raw.routing;
        let routing = Routing {
            primary_reads: match &r.primary_reads {
                None => PrimaryReads::Fallback,
                Some(v) => match v.get_ref().as_str() {
                    "never" => PrimaryReads::Never,
                    "fallback" => PrimaryReads::Fallback,
                    "always" => PrimaryReads::Always,
                    other => {
                        return self.err(
                            Some(v.span()),
                            "routing.primary_reads",
                            format!("unknown value \"{other}\": use never, fallback or always"),
                        )
                    }
                },
            },
            max_lag_bytes: r.max_lag_bytes.as_ref().map(|v| *v.get_ref()).unwrap_or(16 << 20),
            max_lag_ms: r.max_lag_ms.as_ref().map(|v| *v.get_ref()).unwrap_or(5_000),
            read_your_writes: r.read_your_writes.unwrap_or(true),
            defer_begin: r.defer_begin.unwrap_or(false),
            health_interval: self.duration(
                &r.health_interval,
                "routing.health_interval",
                Duration::from_millis(500),
            )?,
            failover_timeout: self.duration(
                &r.failover_timeout,
                "routing.failover_timeout",
                Duration::from_secs(30),
            )?,
            write_functions: r.write_functions.iter().map(|f| f.to_ascii_lowercase()).collect(),
            monitor_user: r.monitor_user.as_ref().map(|v| self.expand(v, "routing.monitor_user")).transpose()?,
            monitor_password: r
                .monitor_password
                .as_ref()
                .map(|v| self.expand(v, "routing.monitor_password"))
                .transpose()?,
        };

        let cache = self.cache(&raw.cache)?;
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(v) => Some(v.get_ref().parse::<SocketAddr>().or_else(|e| {
                self.err(Some(v.span()), "metrics.listen", format!("invalid address \"{}\": {e}", v.get_ref()))
            })?),
        };

        let top_queries = raw.metrics.top_queries.as_ref().map_or(1000, |v| *v.get_ref() as usize);
        let slow_query = self.duration(&raw.metrics.slow_query, "metrics.slow_query", Duration::ZERO)?;

        Ok(Config {
            cache,
            metrics_listen,
            top_queries,
            slow_query,
            origin: None,
            routing,
            listen,
            auth,
            startup_timeout,
            shutdown_timeout,
            reuse_port: raw.proxy.reuse_port.unwrap_or(false),
            workers: match &raw.proxy.workers {
                Some(w) if *w.get_ref() > 1024 => {
                    return self.err(Some(w.span()), "proxy.workers", "at most 1024 worker threads (0 = one per core)")
                }
                Some(w) => *w.get_ref() as usize,
                None => 0,
            },
            peers: raw.proxy.peers.clone(),
            max_connections_per_address: raw.proxy.max_connections_per_address.unwrap_or(0) as usize,
            max_message_size,
            admin_users: raw.proxy.admin_users.clone(),
            client_tls,
            pool,
            prepared,
            users,
            auth_query,
            clusters,
            default_cluster,
            databases,
        })
    }
}

impl Validator<'_> {
    fn cache(&self, c: &super::raw::RawCache) -> Result<CacheSettings, ConfigError> {
        let default_ttl = self.duration(&c.default_ttl, "cache.default_ttl", Duration::from_secs(60))?;
        let mut rules = Vec::new();
        for (n, r) in c.rules.iter().enumerate() {
            let key = |k: &str| format!("cache.rules[{n}].{k}");
            let name = r.name.as_ref().map(|v| v.get_ref().clone()).unwrap_or_else(|| format!("rule{n}"));
            if let Some(re) = &r.regex {
                if let Err(e) = regex::Regex::new(re.get_ref()) {
                    return self.err(Some(re.span()), &key("regex"), format!("invalid regex: {e}"));
                }
            }
            let fingerprint = match &r.fingerprint {
                None => None,
                Some(f) => {
                    let t = f.get_ref().trim();
                    let hex = t.strip_prefix("0x").unwrap_or(t);
                    Some(u64::from_str_radix(hex, 16).or_else(|_| {
                        self.err(
                            Some(f.span()),
                            &key("fingerprint"),
                            format!("invalid fingerprint \"{t}\": expected 16 hex digits"),
                        )
                    })?)
                }
            };
            if r.tables.is_empty() && r.regex.is_none() && fingerprint.is_none() {
                return self.err(
                    None,
                    &format!("cache.rules[{n}]"),
                    "a rule needs tables, regex or fingerprint (use regex = \".\" to cache every safe read)",
                );
            }
            rules.push(CacheRule {
                name,
                tables: r.tables.iter().map(|t| fold_name(t)).collect(),
                regex: r.regex.as_ref().map(|v| v.get_ref().clone()),
                fingerprint,
                ttl: self.duration(&r.ttl, &key("ttl"), default_ttl)?,
            });
        }
        let redis_url = c.redis_url.as_ref().map(|v| self.expand(v, "cache.redis_url")).transpose()?;
        if let (Some(url), Some(v)) = (&redis_url, &c.redis_url) {
            if let Err(e) = redis::Client::open(url.as_str()) {
                return self.err(Some(v.span()), "cache.redis_url", format!("invalid Redis URL: {e}"));
            }
        }
        let l1_bytes = c.l1_max_bytes.as_ref().map(|v| *v.get_ref()).unwrap_or(64 << 20);
        let hints = c.hints.unwrap_or(true);
        if (!rules.is_empty() || c.hints == Some(true)) && l1_bytes == 0 && redis_url.is_none() {
            return self.err(
                None,
                "cache.l1_max_bytes",
                "with no cache.redis_url, the L1 cache is the only store: it cannot be 0",
            );
        }
        Ok(CacheSettings {
            rules,
            // Hints alone do nothing without a store to put results in.
            hints: hints && (l1_bytes > 0 || redis_url.is_some()),
            redis_url,
            l1_bytes,
            max_entry_bytes: c.max_entry_bytes.as_ref().map(|v| *v.get_ref()).unwrap_or(1 << 20),
            default_ttl,
            redis_timeout: self.duration(&c.redis_timeout, "cache.redis_timeout", Duration::from_millis(100))?,
            breaker_cooldown: self.duration(&c.breaker_cooldown, "cache.breaker_cooldown", Duration::from_secs(2))?,
            flight_wait: self.duration(&c.flight_wait, "cache.flight_wait", Duration::from_secs(5))?,
            prefix: c.key_prefix.as_ref().map(|v| v.get_ref().clone()).unwrap_or_else(|| "pgweir".into()),
            safe_functions: c.safe_functions.iter().map(|f| f.to_ascii_lowercase()).collect(),
        })
    }
}

/// A table name as PostgreSQL folds it: quoted keeps its case, unquoted is lowercased.
fn fold_name(t: &str) -> String {
    match t.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(q) => q.to_string(),
        None => t.to_ascii_lowercase(),
    }
}

fn parse_server_tls(s: &str) -> Result<ServerTls, String> {
    match s {
        "disable" => Ok(ServerTls::Disable),
        "require" => Ok(ServerTls::Verify(Verify::None)),
        "verify-ca" => Ok(ServerTls::Verify(Verify::Ca)),
        "verify-full" => Ok(ServerTls::Verify(Verify::Full)),
        _ => Err(format!("unknown TLS mode \"{s}\": use disable, require, verify-ca or verify-full")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        from_str(text, "t.toml", &Overrides::default())
    }

    #[test]
    fn defaults_without_a_file() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:6432".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.pool.wait_timeout, Duration::from_secs(120));
        assert_eq!(c.auth, AuthMethod::ScramSha256);
        let primary = &c.clusters[&c.default_cluster].primary;
        assert_eq!((primary.host.as_str(), primary.port), ("localhost", 5432));
        assert!(c.auth_query.is_some(), "a sidecar without users looks them up");
    }

    #[test]
    fn workers_and_query_metrics_settings() {
        let c = parse("").unwrap();
        assert_eq!((c.workers, c.top_queries, c.slow_query), (0, 1000, Duration::ZERO));
        let c = parse("[proxy]\nworkers = 1\n[metrics]\ntop_queries = 0\nslow_query = \"250ms\"\n").unwrap();
        assert_eq!((c.workers, c.top_queries, c.slow_query), (1, 0, Duration::from_millis(250)));
        let e = parse("[proxy]\nworkers = 5000\n").unwrap_err();
        assert_eq!(e.key, "proxy.workers");
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            listen: vec!["127.0.0.1:7000".into()],
            upstream: Some("postgres://u:p%40ss@db.example:5433/x".into()),
            replicas: vec!["postgres://r1:5432".into()],
            pool_mode: Some("session".into()),
            pool_size: Some(7),
            auth: Some("trust".into()),
        };
        let c = from_str("[pool]\nsize = 3\nmode = \"transaction\"\n", "t.toml", &o).unwrap();
        assert_eq!(c.pool.size, 7);
        assert_eq!(c.pool.mode, PoolMode::Session);
        assert_eq!(c.auth, AuthMethod::Trust);
        let cl = &c.clusters[&c.default_cluster];
        assert_eq!(cl.primary.user.as_deref(), Some("u"));
        assert_eq!(cl.primary.password.as_deref(), Some("p@ss"));
        assert_eq!(cl.primary.port, 5433);
        assert_eq!(cl.replicas.len(), 1);
        assert!(c.auth_query.is_none());
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = parse("[pool]\nsize = 3\nmode = \"bogus\"\n").unwrap_err();
        assert_eq!(e.origin, "t.toml:3");
        assert_eq!(e.key, "pool.mode");
        let e = parse("[pool]\nsize = 3\n\n[proxy]\nlisten = \"nope\"\n").unwrap_err();
        assert_eq!((e.origin.as_str(), e.key.as_str()), ("t.toml:5", "proxy.listen"));
        let e = parse("[pool]\nsize = 3\nbogus_key = 1\n").unwrap_err();
        assert_eq!(e.origin, "t.toml:3");
        assert!(e.key.contains("bogus_key"), "{e}");
        let e = parse("[clusters.a]\nprimary = \"mysql://x\"\n").unwrap_err();
        assert_eq!((e.origin.as_str(), e.key.as_str()), ("t.toml:2", "clusters.a.primary"));
        let e = parse("[databases.d]\ncluster = \"zzz\"\n").unwrap_err();
        assert_eq!(e.key, "databases.d.cluster");
    }

    #[test]
    fn env_substitution() {
        let text = "[[users]]\nname = \"app\"\npassword = \"${PGWEIR_TEST_PW}-x\"\n";
        let raw: RawConfig = toml::from_str(text).unwrap();
        let env = |k: &str| (k == "PGWEIR_TEST_PW").then(|| "s3cret".to_string());
        let v = Validator { text, name: "t.toml", env: &env };
        let c = v.validate(raw, &Overrides::default()).unwrap();
        assert_eq!(c.users[0].password.as_deref(), Some("s3cret-x"));
        let raw: RawConfig = toml::from_str(text).unwrap();
        let none = |_: &str| None;
        let e = Validator { text, name: "t.toml", env: &none }.validate(raw, &Overrides::default()).unwrap_err();
        assert_eq!((e.origin.as_str(), e.key.as_str()), ("t.toml:3", "users[0].password"));
        assert!(e.message.contains("PGWEIR_TEST_PW"));
    }
}
