//! Where cached results and table versions live: the in-process L1 (moka, bounded by bytes) and,
//! when configured, Redis as the shared L2 and the home of table versions for the whole fleet.
//!
//! Table versions are random tokens, never counters: a version key Redis lost (restart,
//! eviction) is recreated with a fresh token, so no old entry can ever be addressed again. A bump
//! writes new tokens and announces them on a pub/sub channel (proxies drop their L1 copies; the
//! announcement is only a hint: every lookup reads the current tokens). A bump that fails leaves
//! this proxy "owing" it: it serves nothing from the cache until the bump has been delivered.
//! Every Redis call has a short timeout, and a circuit breaker stops calling for a cooldown after
//! a failure, so a dead Redis costs queries nothing but a cache bypass.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::key::{hex, Key};
use super::request::Stored;

/// One cached result in L1, with what it depends on (for pub/sub eviction).
pub struct Entry {
    pub stored: Stored,
    pub database: String,
    pub tables: Vec<String>,
    pub ttl: Duration,
}

struct Expiry;

impl moka::Expiry<Key, Arc<Entry>> for Expiry {
    fn expire_after_create(&self, _k: &Key, v: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The database-wide version (bumped by writes whose tables are unknown).
pub const ANY_TABLE: &str = "*";

fn token() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// Opens after a failure and stays open for `cooldown`; then lets calls through again.
struct Breaker {
    open_until: Mutex<Option<Instant>>,
    cooldown: Duration,
}

impl Breaker {
    fn allows(&self) -> bool {
        let g = self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        g.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&self) {
        *self.open_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.cooldown);
    }

    fn succeeded(&self) {
        *self.open_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Redis settings.
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub cooldown: Duration,
}

struct Redis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    /// Version bumps that failed: (database, table). Nothing is served while any is owed.
    owed: Mutex<HashSet<(String, String)>>,
}

#[derive(Debug)]
pub struct Unavailable;

impl Redis {
    fn version_key(&self, db: &str, table: &str) -> String {
        format!("{}:v:{}:{}", self.prefix, db.len(), format_args!("{db}:{table}"))
    }

    fn entry_key(&self, key: &Key) -> String {
        format!("{}:e:{}", self.prefix, hex(key))
    }

    fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager, Unavailable> {
        if !self.breaker.allows() {
            return Err(Unavailable);
        }
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        match tokio::time::timeout(self.timeout * 4, ConnectionManager::new_with_config(self.client.clone(), cfg)).await
        {
            Ok(Ok(c)) => {
                *g = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cache: cannot connect to Redis; bypassing the cache");
                self.breaker.failed();
                Err(Unavailable)
            }
            Err(_) => {
                tracing::warn!("cache: Redis connect timed out; bypassing the cache");
                self.breaker.failed();
                Err(Unavailable)
            }
        }
    }

    /// Runs one command or pipeline with the timeout and the breaker.
    async fn run<T: redis::FromRedisValue>(&self, what: &redis::Pipeline) -> Result<T, Unavailable> {
        let mut c = self.conn().await?;
        match tokio::time::timeout(self.timeout, what.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => {
                self.breaker.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cache: Redis call failed");
                self.breaker.failed();
                Err(Unavailable)
            }
            Err(_) => {
                tracing::debug!("cache: Redis call timed out");
                self.breaker.failed();
                Err(Unavailable)
            }
        }
    }

    /// Delivers bumps owed from earlier failures; Err while any remain.
    async fn settle(&self) -> Result<(), Unavailable> {
        let owed: Vec<(String, String)> = {
            let g = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            if g.is_empty() {
                return Ok(());
            }
            g.iter().cloned().collect()
        };
        let mut by_db: HashMap<&str, Vec<String>> = HashMap::new();
        for (db, t) in &owed {
            by_db.entry(db).or_default().push(t.clone());
        }
        for (db, tables) in by_db {
            self.bump_now(db, &tables).await?;
        }
        let mut g = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        for o in &owed {
            g.remove(o);
        }
        if g.is_empty() {
            tracing::info!("cache: owed invalidations delivered; serving from the cache again");
        }
        Ok(())
    }

    async fn versions(&self, db: &str, tables: &[String]) -> Result<Vec<String>, Unavailable> {
        self.settle().await?;
        let keys: Vec<String> = tables.iter().map(|t| self.version_key(db, t)).collect();
        let mut p = redis::pipe();
        p.cmd("MGET").arg(&keys);
        let (mut got,): (Vec<Option<String>>,) = self.run(&p).await?;
        if got.len() != keys.len() {
            return Err(Unavailable);
        }
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| got[i].is_none()).collect();
        if !missing.is_empty() {
            // Created once: whoever sets first wins, everyone reads the winner.
            let mut p = redis::pipe();
            let fresh: Vec<String> = missing.iter().map(|_| token()).collect();
            for (i, tok) in missing.iter().zip(&fresh) {
                p.cmd("SET").arg(&keys[*i]).arg(tok).arg("NX").arg("GET");
            }
            let old: Vec<Option<String>> = self.run(&p).await?;
            for ((i, tok), prev) in missing.iter().zip(fresh).zip(old) {
                got[*i] = Some(prev.unwrap_or(tok));
            }
        }
        Ok(got.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn bump_now(&self, db: &str, tables: &[String]) -> Result<(), Unavailable> {
        let mut p = redis::pipe();
        for t in tables {
            p.cmd("SET").arg(self.version_key(db, t)).arg(token()).ignore();
        }
        p.cmd("PUBLISH").arg(self.channel()).arg(format!("{db}\0{}", tables.join("\0"))).ignore();
        self.run::<()>(&p).await
    }

    async fn bump(&self, db: &str, tables: &[String]) {
        if self.bump_now(db, tables).await.is_err() {
            tracing::warn!(db, ?tables, "cache: could not invalidate in Redis; serving nothing cached until it can");
            let mut g = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            for t in tables {
                g.insert((db.to_string(), t.clone()));
            }
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, Unavailable> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(self.entry_key(key));
        let (v,): (Option<Vec<u8>>,) = self.run(&p).await?;
        Ok(v.and_then(|v| Stored::decode(&v)))
    }

    async fn put(&self, key: &Key, stored: &Stored, ttl: Duration) {
        let mut p = redis::pipe();
        let ms = ttl.as_millis().max(1) as u64;
        p.cmd("SET").arg(self.entry_key(key)).arg(stored.encode()).arg("PX").arg(ms).ignore();
        let _ = self.run::<()>(&p).await;
    }
}

/// L1 and L2 together.
pub struct Store {
    l1: Option<moka::sync::Cache<Key, Arc<Entry>>>,
    redis: Option<Arc<Redis>>,
    /// Versions when there is no Redis (a sidecar's own).
    local: Mutex<HashMap<(String, String), String>>,
}

impl Store {
    pub fn new(l1_bytes: u64, redis: Option<RedisSettings>) -> Result<Store, String> {
        let l1 = (l1_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(l1_bytes)
                .weigher(|_k: &Key, v: &Arc<Entry>| (v.stored.bytes() + 128).min(u32::MAX as usize) as u32)
                .expire_after(Expiry)
                .support_invalidation_closures()
                .build()
        });
        let redis = match redis {
            None => None,
            Some(s) => {
                // rediss:// builds its rustls config from the process default provider.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = redis::Client::open(s.url.as_str()).map_err(|e| format!("invalid Redis URL: {e}"))?;
                Some(Arc::new(Redis {
                    client,
                    conn: tokio::sync::Mutex::new(None),
                    prefix: s.prefix,
                    timeout: s.timeout,
                    breaker: Breaker { open_until: Mutex::new(None), cooldown: s.cooldown },
                    owed: Mutex::new(HashSet::new()),
                }))
            }
        };
        Ok(Store { l1, redis, local: Mutex::new(HashMap::new()) })
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Current version tokens of `tables` (the caller includes [`ANY_TABLE`]).
    pub async fn versions(&self, db: &str, tables: &[String]) -> Result<Vec<String>, Unavailable> {
        if let Some(r) = &self.redis {
            return r.versions(db, tables).await;
        }
        let mut g = self.local.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tables.iter().map(|t| g.entry((db.to_string(), t.clone())).or_insert_with(token).clone()).collect())
    }

    /// New tokens for `tables`, announced to the fleet; returns when Redis has them (or the
    /// attempt failed and the bump is owed).
    pub async fn bump(&self, db: &str, tables: &[String]) {
        match &self.redis {
            Some(r) => r.bump(db, tables).await,
            None => {
                let mut g = self.local.lock().unwrap_or_else(|p| p.into_inner());
                for t in tables {
                    g.insert((db.to_string(), t.clone()), token());
                }
            }
        }
        self.evict(db, tables);
    }

    /// Drops L1 entries that read any of `tables` (a hint; keys already carry versions).
    pub fn evict(&self, db: &str, tables: &[String]) {
        if let Some(l1) = &self.l1 {
            let (db, tables) = (db.to_string(), tables.to_vec());
            let any = tables.iter().any(|t| t == ANY_TABLE);
            let _ = l1.invalidate_entries_if(move |_, e| {
                e.database == db && (any || e.tables.iter().any(|t| tables.contains(t)))
            });
        }
    }

    pub async fn get(&self, key: &Key) -> Result<Option<(Stored, bool)>, Unavailable> {
        if let Some(e) = self.l1.as_ref().and_then(|l1| l1.get(key)) {
            return Ok(Some((e.stored.clone(), true)));
        }
        match &self.redis {
            Some(r) => Ok(r.get(key).await?.map(|s| (s, false))),
            None => Ok(None),
        }
    }

    /// Fills L1 at once; Redis in the background.
    pub fn put(&self, key: Key, entry: Entry) {
        if let Some(r) = &self.redis {
            let (r, stored, ttl) = (r.clone(), entry.stored.clone(), entry.ttl);
            tokio::spawn(async move { r.put(&key, &stored, ttl).await });
        }
        self.put_l1(key, entry);
    }

    pub fn put_l1(&self, key: Key, entry: Entry) {
        if let Some(l1) = &self.l1 {
            l1.insert(key, Arc::new(entry));
        }
    }

    /// Bytes held in L1 (approximate, as weighed).
    pub fn l1_bytes(&self) -> u64 {
        self.l1.as_ref().map_or(0, |l1| {
            l1.run_pending_tasks();
            l1.weighted_size()
        })
    }

    /// Follows the invalidation channel until `stop`: evicts announced tables from L1, and
    /// flushes L1 whenever the subscription is (re)established (announcements may have been
    /// missed meanwhile).
    pub async fn follow_invalidations(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        use futures_util::StreamExt;
        let Some(r) = self.redis.clone() else { return };
        if self.l1.is_none() {
            return;
        }
        loop {
            let session = async {
                let mut ps = r.client.get_async_pubsub().await.ok()?;
                ps.subscribe(r.channel()).await.ok()?;
                if let Some(l1) = &self.l1 {
                    l1.invalidate_all();
                }
                let mut messages = ps.on_message();
                while let Some(m) = messages.next().await {
                    let payload = m.get_payload_bytes();
                    let text = String::from_utf8_lossy(payload);
                    let mut parts = text.split('\0');
                    if let Some(db) = parts.next() {
                        let tables: Vec<String> = parts.map(str::to_string).collect();
                        self.evict(db, &tables);
                    }
                }
                Some(())
            };
            tokio::select! {
                _ = session => {}
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
