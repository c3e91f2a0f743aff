//! The query-result cache (DESIGN §6): opt-in rules and hints, what may never be cached
//! (`analyze`), keys (`key`), the requests it answers and the responses it stores (`request`),
//! L1 + Redis with table versions (`store`), and single-flight fills (`flight`).
//!
//! The session asks [`Cache::lookup`] for a request that arrives outside a transaction; a hit is
//! answered from the stored frames, a miss comes back with a [`Fill`] that tees the server's
//! response. Every write the proxy forwards is noted with [`writes`]; the session calls
//! [`Cache::invalidate`] before the client sees the ReadyForQuery that ends its transaction.
//! Nothing here ever fails a query: Redis trouble means "not cached".

pub mod analyze;
pub mod flight;
pub mod key;
pub mod request;
pub mod store;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use analyze::{writes, Refusal, Writes};
use analyze::{Functions, ReadFacts};
use key::{Key, KeyInput};
use request::{Shape, Stored, Tee};
use store::{Entry, RedisSettings, Store, ANY_TABLE};

use crate::config::CacheSettings;
use crate::metrics::CacheMetrics;

/// Statement texts whose cache facts are kept.
const FACTS_CACHE: usize = 10_000;
/// Texts longer than this are analyzed every time (and rarely cached).
const MAX_FACTS_TEXT: usize = 8 * 1024;

/// Which rule made a statement cacheable, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Index into the rules; `rules.len()` is the hint comment.
    pub rule: usize,
    pub ttl: Duration,
}

/// A miss the session fills from the server's response.
pub struct Fill {
    pub tee: Tee,
    key: Key,
    database: String,
    tables: Vec<String>,
    matched: Matched,
    /// Held while filling (None: another session's fill was awaited and did not help).
    _ticket: Option<flight::Ticket>,
}

pub enum Lookup {
    Hit(Stored),
    Miss(Fill),
    /// Not cacheable now (counted).
    Bypass,
}

/// What the session knows about a request, for the key.
pub struct Ask<'a> {
    pub database: &'a str,
    pub user: &'a str,
    pub settings: &'a [(String, String)],
    pub shape: Shape,
    pub text: &'a str,
    pub types: &'a [u8],
    pub bind: &'a [u8],
}

pub struct Cache {
    settings: CacheSettings,
    regexes: Vec<Option<regex::Regex>>,
    functions: Functions,
    facts: Mutex<lru::LruCache<Box<str>, Arc<ReadFacts>>>,
    store: Arc<Store>,
    flights: Arc<flight::Flights>,
    pub metrics: CacheMetrics,
}

impl Cache {
    pub fn new(settings: &CacheSettings, metrics: CacheMetrics) -> Result<Cache, String> {
        let regexes = settings
            .rules
            .iter()
            .map(|r| r.regex.as_deref().map(regex::Regex::new).transpose().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let redis = settings.redis_url.clone().map(|url| RedisSettings {
            url,
            prefix: settings.prefix.clone(),
            timeout: settings.redis_timeout,
            cooldown: settings.breaker_cooldown,
        });
        Ok(Cache {
            functions: Functions::new(&settings.safe_functions),
            regexes,
            facts: Mutex::new(lru::LruCache::new(NonZeroUsize::new(FACTS_CACHE).unwrap_or(NonZeroUsize::MIN))),
            store: Arc::new(Store::new(settings.l1_bytes, redis)?),
            flights: Arc::default(),
            settings: settings.clone(),
            metrics,
        })
    }

    /// Anything may be cached at all (rules or hints configured).
    pub fn enabled(&self) -> bool {
        !self.settings.rules.is_empty() || self.settings.hints
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    fn facts(&self, text: &str) -> Arc<ReadFacts> {
        if text.len() > MAX_FACTS_TEXT {
            return Arc::new(analyze::read_facts(text, &self.functions));
        }
        if let Some(f) = self.facts.lock().unwrap_or_else(|p| p.into_inner()).get(text) {
            return f.clone();
        }
        let f = Arc::new(analyze::read_facts(text, &self.functions));
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).put(text.into(), f.clone());
        f
    }

    /// Counts a request a rule matched but the session could not serve from the cache.
    pub fn refused(&self, why: Refusal) {
        self.metrics.refusal(why);
    }

    /// The rule (or hint) that asks for `text` to be cached, and the text's cache facts. Cheap
    /// for texts no rule can match: statements are parsed only when a hint or a table rule
    /// needs it.
    pub fn wanted(&self, text: &str) -> Option<(Matched, Arc<ReadFacts>)> {
        if self.settings.hints {
            if let Some(ttl) = hint_ttl(text) {
                let ttl = ttl.unwrap_or(self.settings.default_ttl);
                return Some((Matched { rule: self.settings.rules.len(), ttl }, self.facts(text)));
            }
        }
        let mut facts: Option<Arc<ReadFacts>> = None;
        for (i, r) in self.settings.rules.iter().enumerate() {
            if let Some(re) = &self.regexes[i] {
                if !re.is_match(text) {
                    continue;
                }
            }
            if let Some(want) = r.fingerprint {
                if crate::route::classify::fingerprint(text) != want {
                    continue;
                }
            }
            let f = facts.get_or_insert_with(|| self.facts(text));
            if !r.tables.is_empty() && !f.tables.iter().any(|t| r.tables.contains(t)) {
                continue;
            }
            return Some((Matched { rule: i, ttl: r.ttl }, f.clone()));
        }
        None
    }

    /// Looks a request up; a miss comes back as a [`Fill`] (or after waiting for another
    /// session's fill of the same key, as a hit).
    pub async fn lookup(&self, ask: &Ask<'_>, matched: Matched, facts: &ReadFacts) -> Lookup {
        if let Some(r) = facts.refusal {
            self.metrics.refusal(r);
            return Lookup::Bypass;
        }
        let mut tables = facts.tables.clone();
        tables.push(ANY_TABLE.into());
        let Ok(versions) = self.store.versions(ask.database, &tables).await else {
            self.metrics.refusal(Refusal::Unavailable);
            return Lookup::Bypass;
        };
        let input = KeyInput {
            database: ask.database,
            user: ask.user,
            settings: ask.settings,
            shape: ask.shape.key_byte(),
            text: ask.text.as_bytes(),
            types: ask.types,
            bind: ask.bind,
        };
        let key = key::derive(&input, &versions);
        let mut waited = false;
        loop {
            match self.store.get(&key).await {
                Ok(Some((stored, from_l1))) => {
                    if !from_l1 {
                        self.store.put_l1(key, self.entry(ask.database, &facts.tables, matched, stored.clone()));
                    }
                    self.metrics.hit(matched.rule, stored.bytes());
                    return Lookup::Hit(stored);
                }
                Ok(None) => {}
                Err(_) => {
                    self.metrics.refusal(Refusal::Unavailable);
                    return Lookup::Bypass;
                }
            }
            if waited {
                break;
            }
            match flight::join(&self.flights, key, self.settings.flight_wait).await {
                flight::Role::Leader(t) => {
                    self.metrics.miss(matched.rule);
                    return Lookup::Miss(self.fill(ask, key, facts, matched, Some(t)));
                }
                flight::Role::Waited => waited = true,
            }
        }
        self.metrics.miss(matched.rule);
        Lookup::Miss(self.fill(ask, key, facts, matched, None))
    }

    fn fill(&self, ask: &Ask<'_>, key: Key, facts: &ReadFacts, matched: Matched, t: Option<flight::Ticket>) -> Fill {
        Fill {
            tee: Tee::new(ask.shape, self.settings.max_entry_bytes),
            key,
            database: ask.database.to_string(),
            tables: facts.tables.clone(),
            matched,
            _ticket: t,
        }
    }

    fn entry(&self, db: &str, tables: &[String], m: Matched, stored: Stored) -> Entry {
        Entry { stored, database: db.to_string(), tables: tables.to_vec(), ttl: m.ttl }
    }

    /// A fill's response ended: store it (if it was a complete, small enough result).
    pub fn complete(&self, fill: Fill, stored: Option<Stored>) {
        match stored {
            Some(s) => {
                self.metrics.stored(fill.matched.rule, s.bytes());
                let e = self.entry(&fill.database, &fill.tables, fill.matched, s);
                self.store.put(fill.key, e);
            }
            None => self.metrics.refusal(fill.tee.failed.unwrap_or(Refusal::NotAResult)),
        }
    }

    /// Bumps the versions of what a transaction wrote. Returns once Redis has them (or the bump
    /// is owed and nothing is served until it is delivered).
    pub async fn invalidate(&self, database: &str, w: &Writes) {
        let tables = match w {
            Writes::None => return,
            Writes::Tables(t) => t.clone(),
            Writes::Any => vec![ANY_TABLE.to_string()],
        };
        self.metrics.invalidations.inc();
        self.store.bump(database, &tables).await;
    }
}

/// `/* pgweir: cache */` or `/* pgweir: cache ttl=30s */` in the comments before the first
/// token: Some(ttl) (None: the default TTL).
pub fn hint_ttl(sql: &str) -> Option<Option<Duration>> {
    let mut rest = sql.trim_start();
    loop {
        let body;
        if let Some(r) = rest.strip_prefix("/*") {
            let end = r.find("*/")?;
            body = &r[..end];
            rest = r[end + 2..].trim_start();
        } else if let Some(r) = rest.strip_prefix("--") {
            let end = r.find('\n').unwrap_or(r.len());
            body = &r[..end];
            rest = r[end..].trim_start();
        } else {
            return None;
        }
        let b = body.trim_start();
        let Some(items) =
            b.get(..6).filter(|p| p.eq_ignore_ascii_case("pgweir")).and_then(|_| b[6..].trim_start().strip_prefix(':'))
        else {
            continue;
        };
        let items: Vec<&str> = items.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).collect();
        if !items.iter().any(|i| i.eq_ignore_ascii_case("cache")) {
            continue;
        }
        let ttl = items
            .iter()
            .find_map(|i| i.strip_prefix("ttl=").or_else(|| i.strip_prefix("TTL=")))
            .and_then(|v| crate::config::raw::DurationValue::Text(v.to_string()).parse().ok());
        return Some(ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        assert_eq!(hint_ttl("/* pgweir: cache ttl=30s */ SELECT 1"), Some(Some(Duration::from_secs(30))));
        assert_eq!(hint_ttl("/* other */ -- pgweir: replica, cache\nSELECT 1"), Some(None));
        assert_eq!(hint_ttl("/* pgweir: primary */ SELECT 1"), None);
        assert_eq!(hint_ttl("SELECT 1 /* pgweir: cache */"), None);
        assert_eq!(hint_ttl("/* unterminated"), None);
    }
}
