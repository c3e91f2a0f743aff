//! What one step of a bench sweep measured: latency histograms (microseconds, hdrhistogram),
//! the percentiles taken from them, and the [`StepResult`] every report is made from. Pure.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies above this (one hour, in µs) are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An empty latency histogram: 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Records one transaction's latency in microseconds (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_LATENCY_US));
}

/// The percentiles a report shows, in milliseconds (all 0 when nothing was recorded).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencyMs {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// PgWeir's pool mode for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }

    pub fn parse(s: &str) -> Option<PoolMode> {
        match s.trim() {
            "transaction" => Some(PoolMode::Transaction),
            "session" => Some(PoolMode::Session),
            _ => None,
        }
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured step: a target at one client count (and, for PgWeir, one pool mode and size).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// `direct`, `pgweir`, or a `--target` name.
    pub target: String,
    /// Set for `pgweir` steps only.
    pub pool_mode: Option<PoolMode>,
    /// Set for `pgweir` steps only.
    pub pool_size: Option<u32>,
    pub clients: u32,
    /// Clients that got a connection before the step ended (fewer than `clients` when a
    /// session pool is smaller than the client count).
    pub clients_connected: u32,
    /// Transactions completed in the measured window (after the warmup).
    pub transactions: u64,
    /// Length of the measured window.
    pub duration_s: f64,
    pub tps: f64,
    pub latency_ms: LatencyMs,
    /// Transactions that failed in the measured window.
    pub errors: u64,
    /// The first error's text (SQLSTATE and message for server errors).
    pub first_error: Option<String>,
    /// The most upstream client backends seen at once during the step (excluding the poller's
    /// own); `None` when no poll succeeded.
    pub server_connections: Option<i64>,
}

impl StepResult {
    /// `pgweir transaction pool 8, 16 clients`, `direct, 16 clients`.
    pub fn label(&self) -> String {
        match (self.pool_mode, self.pool_size) {
            (Some(m), Some(n)) => format!("{} {m} pool {n}, {} clients", self.target, self.clients),
            _ => format!("{}, {} clients", self.target, self.clients),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.002
    }

    #[test]
    fn percentiles_from_a_uniform_histogram() {
        let mut h = new_histogram();
        for us in 1..=10_000 {
            record(&mut h, us);
        }
        let l = LatencyMs::from_histogram(&h);
        assert!(close(l.p50, 5.0), "{l:?}");
        assert!(close(l.p95, 9.5), "{l:?}");
        assert!(close(l.p99, 9.9), "{l:?}");
        assert!(close(l.max, 10.0), "{l:?}");
    }

    #[test]
    fn percentiles_see_the_tail() {
        let mut h = new_histogram();
        for _ in 0..980 {
            record(&mut h, 1_000);
        }
        for _ in 0..20 {
            record(&mut h, 80_000);
        }
        let l = LatencyMs::from_histogram(&h);
        assert!(close(l.p50, 1.0) && close(l.p95, 1.0), "{l:?}");
        assert!(close(l.p99, 80.0) && close(l.max, 80.0), "{l:?}");
    }

    #[test]
    fn empty_and_out_of_range() {
        assert_eq!(LatencyMs::from_histogram(&new_histogram()), LatencyMs::default());
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(LatencyMs::from_histogram(&h).max >= 3_600_000.0);
    }

    #[test]
    fn pool_modes_parse_and_print() {
        assert_eq!(PoolMode::parse("session"), Some(PoolMode::Session));
        assert_eq!(PoolMode::parse(" transaction"), Some(PoolMode::Transaction));
        assert_eq!(PoolMode::parse("statement"), None);
        assert_eq!(serde_json::to_string(&PoolMode::Transaction).unwrap(), "\"transaction\"");
    }
}
