//! Prometheus metrics: a registry per proxy (never a global one, so tests can run several
//! proxies in one process), typed handles resolved once at startup for the hot path, and the
//! HTTP endpoint that exposes them (`http`).

pub mod http;
pub mod proxy;
pub mod queries;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::cache::Refusal;

/// The result cache's counters, by rule (the rule's name; `hint` for the comment hint) and by
/// refusal reason. Handles are resolved at startup: nothing is looked up per query.
#[derive(Clone)]
pub struct CacheMetrics {
    /// The rules' names, then `hint` (the order of the per-rule handles).
    names: Vec<String>,
    hits: Vec<IntCounter>,
    misses: Vec<IntCounter>,
    served_bytes: Vec<IntCounter>,
    stored_bytes: Vec<IntCounter>,
    refusals: Vec<IntCounter>,
    pub invalidations: IntCounter,
    pub l1_bytes: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry.register(Box::new(v.clone())).expect("metric registered once");
    v
}

impl CacheMetrics {
    /// `rules`: the configured rules' names in order (the hint comes after them).
    pub fn new(registry: &Registry, rules: &[String]) -> CacheMetrics {
        let names: Vec<&str> = rules.iter().map(String::as_str).chain(["hint"]).collect();
        let per_rule = |name: &str, help: &str| {
            let v = counter_vec(registry, name, help, "rule");
            names.iter().map(|n| v.with_label_values(&[n])).collect::<Vec<_>>()
        };
        let refusals = counter_vec(
            registry,
            "pgweir_cache_refusals_total",
            "Requests a cache rule matched that were not served from or stored in the cache, by reason",
            "reason",
        );
        let invalidations =
            IntCounter::new("pgweir_cache_invalidations_total", "Table version bumps sent for committed writes")
                .expect("valid metric");
        registry.register(Box::new(invalidations.clone())).expect("metric registered once");
        let l1_bytes = IntGauge::new("pgweir_cache_l1_bytes", "Bytes held in the in-process cache (as weighed)")
            .expect("valid metric");
        registry.register(Box::new(l1_bytes.clone())).expect("metric registered once");
        CacheMetrics {
            names: names.iter().map(|n| n.to_string()).collect(),
            hits: per_rule("pgweir_cache_hits_total", "Requests answered from the cache"),
            misses: per_rule("pgweir_cache_misses_total", "Cacheable requests that went to the server"),
            served_bytes: per_rule("pgweir_cache_served_bytes_total", "Result bytes answered from the cache"),
            stored_bytes: per_rule("pgweir_cache_stored_bytes_total", "Result bytes stored in the cache"),
            refusals: Refusal::ALL.iter().map(|r| refusals.with_label_values(&[r.label()])).collect(),
            invalidations,
            l1_bytes,
        }
    }

    fn at(v: &[IntCounter], i: usize) -> Option<&IntCounter> {
        v.get(i).or_else(|| v.last())
    }

    pub fn hit(&self, rule: usize, bytes: usize) {
        if let Some(c) = Self::at(&self.hits, rule) {
            c.inc();
        }
        if let Some(c) = Self::at(&self.served_bytes, rule) {
            c.inc_by(bytes as u64);
        }
    }

    pub fn miss(&self, rule: usize) {
        if let Some(c) = Self::at(&self.misses, rule) {
            c.inc();
        }
    }

    pub fn stored(&self, rule: usize, bytes: usize) {
        if let Some(c) = Self::at(&self.stored_bytes, rule) {
            c.inc_by(bytes as u64);
        }
    }

    pub fn refusal(&self, why: Refusal) {
        self.refusals[why.index()].inc();
    }

    /// Per rule: (name, hits, misses, bytes served, bytes stored), for SHOW CACHE.
    pub fn rows(&self) -> Vec<(String, u64, u64, u64, u64)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let get = |v: &[IntCounter]| v.get(i).map_or(0, |c| c.get());
                (n.clone(), get(&self.hits), get(&self.misses), get(&self.served_bytes), get(&self.stored_bytes))
            })
            .collect()
    }

    /// Refusals by reason label, for SHOW CACHE.
    pub fn refusal_counts(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL.iter().map(|r| (r.label(), self.refusals[r.index()].get())).collect()
    }
}

/// Everything the proxy measures.
pub struct Metrics {
    pub registry: Registry,
    pub cache: CacheMetrics,
    pub proxy: proxy::ProxyMetrics,
    /// Top statements by fingerprint (SHOW QUERIES).
    pub queries: queries::QueryStats,
}

impl Metrics {
    /// `top_queries`: statement shapes SHOW QUERIES keeps (0 = off).
    pub fn new(cache_rules: &[String], top_queries: usize) -> Metrics {
        let registry = Registry::new();
        let cache = CacheMetrics::new(&registry, cache_rules);
        let proxy = proxy::ProxyMetrics::new(&registry);
        Metrics { registry, cache, proxy, queries: queries::QueryStats::new(top_queries) }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
