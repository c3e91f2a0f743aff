//! What `pgweir bench` prints and writes: the results table for stdout and the JSON document
//! for `--json` (settings, every step's result, the recommendations). Pure: callers write the
//! strings out.

use serde::Serialize;

use super::recommend::Recommendation;
use super::stats::{PoolMode, StepResult};

/// The settings a run used, as the JSON report records them (passwords masked).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsReport {
    pub upstream: String,
    pub workload: String,
    pub mode: String,
    pub clients: Vec<u32>,
    pub pool_sizes: Vec<u32>,
    pub pool_modes: Vec<PoolMode>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub scale: u32,
    pub init: bool,
    pub direct: bool,
    pub pgweir: bool,
    pub targets: Vec<TargetReport>,
    pub p99_max_ms: f64,
}

/// A `--target NAME=URL` (password masked).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
}

/// The whole `--json` document.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub settings: &'a SettingsReport,
    pub results: &'a [StepResult],
    pub recommendations: &'a [Recommendation],
}

impl Report<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises") + "\n"
    }
}

/// `postgres://user:***@host/db` for a URL with a password; anything else unchanged.
pub fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

const HEADERS: [&str; 11] = [
    "target",
    "pool mode",
    "pool size",
    "clients",
    "TPS",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "errors",
    "server conns",
];

/// The results as an aligned text table (text columns left-aligned, numbers right-aligned).
pub fn table(results: &[StepResult]) -> String {
    let rows: Vec<[String; 11]> = results
        .iter()
        .map(|r| {
            let dash = || "-".to_string();
            [
                r.target.clone(),
                r.pool_mode.map_or_else(dash, |m| m.to_string()),
                r.pool_size.map_or_else(dash, |n| n.to_string()),
                if r.clients_connected < r.clients {
                    format!("{}/{}", r.clients_connected, r.clients)
                } else {
                    r.clients.to_string()
                },
                format!("{:.1}", r.tps),
                format!("{:.2}", r.latency_ms.p50),
                format!("{:.2}", r.latency_ms.p95),
                format!("{:.2}", r.latency_ms.p99),
                format!("{:.2}", r.latency_ms.max),
                r.errors.to_string(),
                r.server_connections.map_or_else(dash, |n| n.to_string()),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i < 2 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADERS.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::recommend::recommend;
    use crate::bench::stats::LatencyMs;

    fn results() -> Vec<StepResult> {
        let base = StepResult {
            target: "direct".into(),
            pool_mode: None,
            pool_size: None,
            clients: 4,
            clients_connected: 4,
            transactions: 12_345,
            duration_s: 2.0,
            tps: 6172.5,
            latency_ms: LatencyMs { p50: 0.5, p95: 1.25, p99: 2.0, max: 10.0 },
            errors: 0,
            first_error: None,
            server_connections: Some(4),
        };
        let pg = StepResult {
            target: "pgweir".into(),
            pool_mode: Some(PoolMode::Transaction),
            pool_size: Some(2),
            ..base.clone()
        };
        vec![base, pg]
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&results());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("target  pool mode    pool size  clients"), "{t}");
        // Text columns start together, number columns end together.
        let end_of = |line: &str, cell: &str| line.find(cell).map(|i| i + cell.len());
        assert_eq!(lines[1].find('-'), lines[2].find("transaction"), "{t}");
        assert_eq!(end_of(lines[0], "TPS"), end_of(lines[1], "6172.5"), "{t}");
        assert_eq!(end_of(lines[0], "pool size"), end_of(lines[2], "transaction          2"), "{t}");
        assert_eq!(lines[0].len(), lines[2].len(), "{t}");
        assert!(lines[1].contains("    0.50    1.25    2.00   10.00       0"), "{t}");

        let mut waiting = results();
        waiting[1].clients = 16;
        waiting[1].clients_connected = 4;
        let t = table(&waiting);
        assert!(t.lines().nth(2).unwrap().contains("  2     4/16  "), "{t}");
    }

    #[test]
    fn json_shape() {
        let rs = results();
        let recs = recommend(&rs, 50.0);
        let settings = SettingsReport {
            upstream: mask_password("postgres://u:secret@db:5432/app"),
            workload: "select-only".into(),
            mode: "simple".into(),
            clients: vec![4],
            pool_sizes: vec![2],
            pool_modes: vec![PoolMode::Transaction],
            duration_s: 2.0,
            warmup_s: 0.0,
            scale: 1,
            init: true,
            direct: true,
            pgweir: true,
            targets: vec![],
            p99_max_ms: 50.0,
        };
        let text = Report { settings: &settings, results: &rs, recommendations: &recs }.to_json();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["settings"]["upstream"], "postgres://u:***@db:5432/app");
        assert_eq!(v["settings"]["pool_modes"][0], "transaction");
        assert_eq!(v["results"][0]["target"], "direct");
        assert!(v["results"][0]["pool_size"].is_null());
        assert_eq!(v["results"][1]["pool_mode"], "transaction");
        assert_eq!(v["results"][1]["latency_ms"]["p99"], 2.0);
        assert_eq!(v["results"][1]["server_connections"], 4);
        assert_eq!(v["recommendations"][0]["pool_size"], 2);
        assert_eq!(v["recommendations"][0]["clients"], 4);
        assert!(v["recommendations"][0]["text"].as_str().unwrap().contains("pool size 2"));
    }

    #[test]
    fn masks_only_passwords() {
        assert_eq!(mask_password("postgres://postgres@h:5432/db"), "postgres://postgres@h:5432/db");
    }
}
