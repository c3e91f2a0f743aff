//! Top statements by fingerprint, for SHOW QUERIES and the slow-query log: calls, total, mean
//! and max time, and how many ran on each route. A request is a simple Query or an extended
//! batch up to its Sync, timed from forwarding to its ReadyForQuery. The text kept is the first
//! one seen with every literal replaced by `?` (no values reach the console or the log).
//! Bounded: when full, the least-called tenth of the statements is forgotten at once, as
//! pg_stat_statements does, so a flood of distinct statements costs one sort per tenth.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use super::proxy::RouteLabel;

/// One statement shape's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Literal-free text; empty until a session that renders it reports the statement.
    pub text: String,
    pub calls: u64,
    pub total_us: u64,
    pub max_us: u64,
    /// Calls by route: primary, replica, cache, shard.
    pub routes: [u64; 4],
}

impl Stat {
    /// The route most of its calls took.
    pub fn main_route(&self) -> &'static str {
        let (i, _) = self.routes.iter().enumerate().max_by_key(|(_, n)| **n).unwrap_or((0, &0));
        ["primary", "replica", "cache", "shard"][i]
    }
}

fn route_index(r: RouteLabel) -> usize {
    match r {
        RouteLabel::Primary => 0,
        RouteLabel::Replica => 1,
        RouteLabel::Cache => 2,
        RouteLabel::Shard => 3,
    }
}

/// Hashes for maps keyed by fingerprints (already well-mixed hashes): one multiply with a
/// key drawn per map, so nobody can aim statements at one bucket, instead of SipHash.
#[derive(Clone, Copy)]
pub struct FingerprintHash(u64);

impl Default for FingerprintHash {
    fn default() -> Self {
        FingerprintHash(rand::random::<u64>() | 1)
    }
}

impl BuildHasher for FingerprintHash {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher { key: self.0, h: 0 }
    }
}

pub struct KeyedHasher {
    key: u64,
    h: u64,
}

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        let x = self.h.wrapping_mul(self.key);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.h = (self.h.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.h ^= n;
    }
}

/// A map keyed by fingerprints.
pub type FingerprintMap<V> = HashMap<u64, V, FingerprintHash>;

/// The shared table; `capacity` 0 turns it off.
pub struct QueryStats {
    capacity: usize,
    map: Mutex<FingerprintMap<Stat>>,
}

impl QueryStats {
    pub fn new(capacity: usize) -> QueryStats {
        QueryStats { capacity, map: Mutex::new(FingerprintMap::default()) }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Adds one request of `fingerprint`. `text` (literal-free) fills in the statement's text
    /// if it has none yet.
    pub fn record(&self, fingerprint: u64, route: RouteLabel, took: Duration, text: Option<String>) {
        if self.capacity == 0 {
            return;
        }
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&fingerprint) && map.len() >= self.capacity {
            evict(&mut map, self.capacity);
        }
        let s = map.entry(fingerprint).or_default();
        if s.text.is_empty() {
            if let Some(t) = text {
                s.text = t;
            }
        }
        s.calls += 1;
        s.total_us = s.total_us.saturating_add(us);
        s.max_us = s.max_us.max(us);
        s.routes[route_index(route)] += 1;
    }

    /// The text recorded for a fingerprint, if any (the slow-query log).
    pub fn text(&self, fingerprint: u64) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&fingerprint).map(|s| s.text.clone()).filter(|t| !t.is_empty())
    }

    /// Every statement, by total time, most first.
    pub fn top(&self) -> Vec<(u64, Stat)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(u64, Stat)> = map.iter().map(|(k, s)| (*k, s.clone())).collect();
        drop(map);
        v.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(&b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forgets the least-called tenth (at least one).
fn evict(map: &mut FingerprintMap<Stat>, capacity: usize) {
    let mut calls: Vec<(u64, u64)> = map.iter().map(|(k, s)| (s.calls, *k)).collect();
    calls.sort_unstable();
    for (_, k) in calls.into_iter().take((capacity / 10).max(1)) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_accumulate_by_fingerprint_and_the_first_text_stays() {
        let q = QueryStats::new(10);
        q.record(1, RouteLabel::Primary, Duration::from_micros(100), Some("select ?".into()));
        q.record(1, RouteLabel::Replica, Duration::from_micros(300), Some("other".into()));
        q.record(1, RouteLabel::Replica, Duration::from_micros(200), None);
        q.record(2, RouteLabel::Cache, Duration::from_micros(50), None);
        let top = q.top();
        assert_eq!(top[0].0, 1);
        let s = &top[0].1;
        assert_eq!((s.calls, s.total_us, s.max_us), (3, 600, 300));
        assert_eq!(s.text, "select ?");
        assert_eq!(s.routes, [1, 2, 0, 0]);
        assert_eq!(s.main_route(), "replica");
        assert_eq!(top[1].1.text, "", "no text seen for it");
        assert_eq!(q.text(2), None);
        q.record(2, RouteLabel::Cache, Duration::from_micros(50), Some("t".into()));
        assert_eq!(q.text(2).as_deref(), Some("t"), "a later report fills the text in");
    }

    #[test]
    fn a_full_table_forgets_its_least_called_statements() {
        let q = QueryStats::new(20);
        for fp in 0..20u64 {
            for _ in 0..=fp {
                q.record(fp, RouteLabel::Primary, Duration::from_micros(1), None);
            }
        }
        q.record(100, RouteLabel::Primary, Duration::from_micros(1), None);
        let kept: Vec<u64> = q.top().iter().map(|(k, _)| *k).collect();
        assert_eq!(q.len(), 19, "two least called forgotten, the new one added");
        assert!(!kept.contains(&0) && !kept.contains(&1) && kept.contains(&100) && kept.contains(&19));
    }

    #[test]
    fn capacity_zero_records_nothing() {
        let q = QueryStats::new(0);
        q.record(1, RouteLabel::Primary, Duration::from_micros(1), None);
        assert!(!q.enabled() && q.is_empty());
    }
}
