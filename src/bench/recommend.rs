//! The pool-size recommendation: for each (pool mode, client count) swept through PgWeir, the
//! smallest pool size whose TPS is within 5% of that sweep's best, whose p99 is under the
//! limit, which had no errors and where every client got a connection; or a sentence saying
//! why none qualifies. Pure.

use serde::Serialize;

use super::stats::{PoolMode, StepResult};

/// A pool size qualifies when its TPS is at least this fraction of the sweep's best.
pub const TPS_FRACTION: f64 = 0.95;

/// The verdict for one (pool mode, client count) sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub pool_mode: PoolMode,
    pub clients: u32,
    /// The recommended pool size; `None` when none qualifies.
    pub pool_size: Option<u32>,
    /// The sweep's best TPS and the (smallest) pool size that reached it.
    pub best_tps: f64,
    pub best_pool_size: Option<u32>,
    /// The sentence the report prints.
    pub text: String,
}

/// One recommendation per (pool mode, client count) among the `pgweir` results, in the order
/// they first appear.
pub fn recommend(results: &[StepResult], p99_max_ms: f64) -> Vec<Recommendation> {
    let mut groups: Vec<(PoolMode, u32)> = Vec::new();
    for r in results {
        if let (Some(mode), Some(_)) = (r.pool_mode, r.pool_size) {
            if !groups.contains(&(mode, r.clients)) {
                groups.push((mode, r.clients));
            }
        }
    }
    groups
        .into_iter()
        .map(|(mode, clients)| {
            let mut sweep: Vec<&StepResult> = results
                .iter()
                .filter(|r| r.pool_mode == Some(mode) && r.clients == clients && r.pool_size.is_some())
                .collect();
            sweep.sort_by_key(|r| r.pool_size);
            decide(mode, clients, &sweep, p99_max_ms)
        })
        .collect()
}

fn decide(mode: PoolMode, clients: u32, sweep: &[&StepResult], p99_max_ms: f64) -> Recommendation {
    let head = format!("{mode} mode, {clients} clients");
    let mut rec = Recommendation {
        pool_mode: mode,
        clients,
        pool_size: None,
        best_tps: 0.0,
        best_pool_size: None,
        text: String::new(),
    };
    // The first (smallest) pool size with the highest TPS.
    let best = sweep.iter().fold(None::<&StepResult>, |b, r| match b {
        Some(b) if b.tps >= r.tps => Some(b),
        _ => Some(r),
    });
    let Some(best) = best.filter(|b| b.tps > 0.0) else {
        rec.text = format!("{head}: no pool size qualifies: no transaction completed at any pool size");
        return rec;
    };
    rec.best_tps = best.tps;
    rec.best_pool_size = best.pool_size;
    let best_text = format!("best {:.0} TPS at pool size {}", best.tps, size(best));
    let near: Vec<&&StepResult> = sweep.iter().filter(|r| r.tps >= best.tps * TPS_FRACTION).collect();
    let fast: Vec<&&StepResult> = near.iter().copied().filter(|r| r.latency_ms.p99 < p99_max_ms).collect();
    if let Some(pick) = fast.iter().find(|r| r.errors == 0 && r.clients_connected >= r.clients) {
        rec.pool_size = pick.pool_size;
        rec.text = format!(
            "{head}: pool size {} ({:.0} TPS, p99 {:.1} ms; {best_text})",
            size(pick),
            pick.tps,
            pick.latency_ms.p99
        );
        return rec;
    }
    rec.text = if fast.is_empty() {
        let lowest =
            near.iter().min_by(|a, b| a.latency_ms.p99.total_cmp(&b.latency_ms.p99)).expect("best is near itself");
        format!(
            "{head}: no pool size qualifies: every pool size within 5% of the {best_text} has p99 at or over \
             {p99_max_ms} ms (lowest {:.1} ms at pool size {}); raise --p99-max or try fewer clients",
            lowest.latency_ms.p99,
            size(lowest)
        )
    } else {
        let first = fast[0];
        let problem = if first.errors > 0 {
            format!("{} errors, the first: {}", first.errors, first.first_error.as_deref().unwrap_or("no message"))
        } else {
            format!("{} of {} clients never got a connection", first.clients - first.clients_connected, first.clients)
        };
        format!(
            "{head}: no pool size qualifies: the pool sizes within 5% of the {best_text} and with p99 under \
             {p99_max_ms} ms all had errors or clients left without a connection (pool size {}: {problem})",
            size(first)
        )
    };
    rec
}

fn size(r: &StepResult) -> u32 {
    r.pool_size.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::LatencyMs;

    fn step(mode: PoolMode, clients: u32, pool: u32, tps: f64, p99: f64, errors: u64) -> StepResult {
        StepResult {
            target: "pgweir".into(),
            pool_mode: Some(mode),
            pool_size: Some(pool),
            clients,
            clients_connected: clients,
            transactions: (tps * 10.0) as u64,
            duration_s: 10.0,
            tps,
            latency_ms: LatencyMs { p50: p99 / 2.0, p95: p99, p99, max: p99 * 2.0 },
            errors,
            first_error: (errors > 0).then(|| "53300: pool timeout".to_string()),
            server_connections: Some(i64::from(pool)),
        }
    }

    const T: PoolMode = PoolMode::Transaction;

    #[test]
    fn smallest_pool_within_five_percent() {
        let rs = vec![
            step(T, 16, 2, 500.0, 10.0, 0),
            step(T, 16, 8, 960.0, 12.0, 0),
            step(T, 16, 4, 800.0, 9.0, 0),
            step(T, 16, 16, 1000.0, 11.0, 0),
        ];
        let r = recommend(&rs, 50.0);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].pool_size, r[0].best_pool_size, r[0].best_tps), (Some(8), Some(16), 1000.0));
        assert!(r[0].text.contains("pool size 8 (960 TPS"), "{}", r[0].text);
    }

    #[test]
    fn ties_go_to_the_smallest_pool() {
        let rs = vec![step(T, 4, 4, 700.0, 5.0, 0), step(T, 4, 2, 700.0, 5.0, 0), step(T, 4, 8, 700.0, 5.0, 0)];
        let r = &recommend(&rs, 50.0)[0];
        assert_eq!((r.pool_size, r.best_pool_size), (Some(2), Some(2)));
    }

    #[test]
    fn p99_limit_skips_fast_but_slow_tailed_pools() {
        let rs = vec![step(T, 64, 2, 990.0, 80.0, 0), step(T, 64, 4, 1000.0, 30.0, 0), step(T, 64, 8, 400.0, 5.0, 0)];
        assert_eq!(recommend(&rs, 50.0)[0].pool_size, Some(4));
        // At exactly the limit a pool does not qualify.
        assert_eq!(recommend(&rs, 30.0)[0].pool_size, None);
    }

    #[test]
    fn none_qualifies_says_why() {
        let rs = vec![step(T, 64, 2, 1000.0, 120.0, 0), step(T, 64, 4, 980.0, 90.0, 0), step(T, 64, 8, 500.0, 10.0, 0)];
        let r = &recommend(&rs, 50.0)[0];
        assert_eq!(r.pool_size, None);
        assert!(
            r.text.contains("no pool size qualifies") && r.text.contains("lowest 90.0 ms at pool size 4"),
            "{}",
            r.text
        );

        let rs = vec![step(T, 8, 2, 1000.0, 10.0, 3), step(T, 8, 4, 100.0, 10.0, 0)];
        let r = &recommend(&rs, 50.0)[0];
        assert_eq!(r.pool_size, None);
        assert!(r.text.contains("(pool size 2: 3 errors, the first: 53300: pool timeout)"), "{}", r.text);

        // A session pool smaller than the client count leaves clients waiting: not a candidate.
        let s = PoolMode::Session;
        let mut starved = step(s, 16, 4, 1000.0, 5.0, 0);
        starved.clients_connected = 4;
        let rs = vec![starved.clone(), step(s, 16, 16, 990.0, 8.0, 0)];
        assert_eq!(recommend(&rs, 50.0)[0].pool_size, Some(16));
        let r = &recommend(&[starved], 50.0)[0];
        assert!(r.text.contains("(pool size 4: 12 of 16 clients never got a connection)"), "{}", r.text);

        let rs = vec![step(T, 8, 2, 0.0, 0.0, 5)];
        let r = &recommend(&rs, 50.0)[0];
        assert!(r.text.contains("no transaction completed"), "{}", r.text);
        assert_eq!(r.best_pool_size, None);
    }

    #[test]
    fn one_verdict_per_mode_and_client_count() {
        let mut direct = step(T, 16, 0, 5000.0, 1.0, 0);
        direct.target = "direct".into();
        direct.pool_mode = None;
        direct.pool_size = None;
        let s = PoolMode::Session;
        let rs =
            vec![direct, step(T, 16, 2, 100.0, 1.0, 0), step(s, 16, 2, 50.0, 1.0, 0), step(T, 64, 2, 80.0, 1.0, 0)];
        let r = recommend(&rs, 50.0);
        let keys: Vec<(PoolMode, u32)> = r.iter().map(|r| (r.pool_mode, r.clients)).collect();
        assert_eq!(keys, vec![(T, 16), (s, 16), (T, 64)]);
        assert!(recommend(&[], 50.0).is_empty());
    }
}
