//! What idle mode (`pgweir bench --idle N`) computes and prints: the samples of PgWeir's memory
//! and open files at each connection count, the least-squares slope (bytes per idle
//! connection), the table for stdout and the `--json` document, plus the readers of the texts
//! it samples (`/proc/PID/status`, the Prometheus text of `/metrics`). Pure: callers read the
//! files and write the strings.

use serde::Serialize;

/// PgWeir measured at one connection count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IdleSample {
    /// Idle client connections logged in (as PgWeir counts them).
    pub connections: u32,
    /// VmRSS of the PgWeir process.
    pub rss_bytes: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// Seconds the bench took to log in this step's new connections.
    pub connect_s: f64,
}

/// A step as the JSON report records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleStep {
    #[serde(flatten)]
    pub sample: IdleSample,
    /// (RSS − first step's RSS) / (connections − first step's connections); `None` for the first.
    pub bytes_per_connection_since_first: Option<f64>,
}

/// The settings of an idle run (password masked).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleSettingsReport {
    pub upstream: String,
    pub connections: u32,
    pub steps: Vec<u32>,
    pub pool_mode: &'static str,
    pub pool_size: u32,
    /// Logins in flight at once.
    pub concurrent_logins: usize,
    /// RLIMIT_NOFILE's soft limit before and after raising it to the hard limit.
    pub nofile_before: u64,
    pub nofile_after: u64,
}

/// The whole `--json` document of idle mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleReport {
    pub settings: IdleSettingsReport,
    /// PgWeir started, before any client.
    pub at_rest: IdleSample,
    pub steps: Vec<IdleStep>,
    /// Least-squares slope of RSS over connections across the steps; `None` with fewer than
    /// two distinct connection counts.
    pub bytes_per_connection: Option<f64>,
    /// The same slope for open files.
    pub fds_per_connection: Option<f64>,
    /// Why the run stopped before its last step, if it did.
    pub stopped: Option<String>,
}

impl IdleReport {
    pub fn new(
        settings: IdleSettingsReport,
        at_rest: IdleSample,
        samples: &[IdleSample],
        stopped: Option<String>,
    ) -> IdleReport {
        let first = samples.first().copied();
        let steps = samples
            .iter()
            .enumerate()
            .map(|(i, s)| IdleStep {
                sample: *s,
                bytes_per_connection_since_first: first
                    .filter(|f| i > 0 && s.connections > f.connections)
                    .map(|f| (s.rss_bytes as f64 - f.rss_bytes as f64) / f64::from(s.connections - f.connections)),
            })
            .collect();
        let points = |y: fn(&IdleSample) -> u64| -> Vec<(f64, f64)> {
            samples.iter().map(|s| (f64::from(s.connections), y(s) as f64)).collect()
        };
        IdleReport {
            settings,
            at_rest,
            steps,
            bytes_per_connection: slope(&points(|s| s.rss_bytes)),
            fds_per_connection: slope(&points(|s| s.fds)),
            stopped,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises") + "\n"
    }

    /// The table and the slope, as printed on stdout.
    pub fn text(&self) -> String {
        const HEADERS: [&str; 5] = ["connections", "RSS MiB", "fds", "bytes/conn since first", "login s"];
        let rows: Vec<[String; 5]> = self
            .steps
            .iter()
            .map(|s| {
                [
                    s.sample.connections.to_string(),
                    format!("{:.1}", mib(s.sample.rss_bytes)),
                    s.sample.fds.to_string(),
                    s.bytes_per_connection_since_first.map_or_else(|| "-".to_string(), |b| format!("{b:.0}")),
                    format!("{:.2}", s.sample.connect_s),
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
            let cols: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:>w$}")).collect();
            cols.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = format!(
            "PgWeir at rest: RSS {:.1} MiB, {} fds ({} mode, pool size {})\n",
            mib(self.at_rest.rss_bytes),
            self.at_rest.fds,
            self.settings.pool_mode,
            self.settings.pool_size
        );
        out.push_str(&line(&HEADERS.map(String::from)));
        for row in &rows {
            out.push_str(&line(row));
        }
        match (self.bytes_per_connection, self.fds_per_connection) {
            (Some(b), Some(f)) => out.push_str(&format!(
                "Slope (least squares over the {} steps): {b:.0} bytes ({:.2} KiB) of RSS and {f:.2} fds per idle connection\n",
                self.steps.len(),
                b / 1024.0
            )),
            _ => out.push_str("Slope: needs at least two different connection counts (--idle-steps)\n"),
        }
        if self.stopped.is_some() {
            let reached = self.steps.last().map_or(0, |s| s.sample.connections);
            out.push_str(&format!(
                "Stopped at {reached} of {} connections (the reason follows on stderr)\n",
                self.settings.connections
            ));
        }
        out
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The least-squares slope of y over x; `None` with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// VmRSS in bytes from the text of `/proc/PID/status` (`VmRSS:   123456 kB`).
pub fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// The soft "Max open files" limit from the text of `/proc/PID/limits`.
pub fn open_files_limit(limits: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The sum over states of `pgweir_client_connections` in a Prometheus text exposition; `None`
/// when the metric is absent.
pub fn client_connections(metrics: &str) -> Option<u64> {
    let mut total = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("pgweir_client_connections") else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())?;
        *total.get_or_insert(0) += value.max(0.0) as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares() {
        // Exactly linear: 2,000 bytes per connection on top of 30 MB.
        let line: Vec<(f64, f64)> = [1000.0, 5000.0, 10_000.0, 15_000.0].map(|x| (x, 30e6 + 2000.0 * x)).to_vec();
        assert!((slope(&line).unwrap() - 2000.0).abs() < 1e-6);
        // Noisy points: the fitted slope, not the last difference.
        let noisy = [(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 5.0)];
        // x̄ = 1.5, ȳ = 2.75: Sxy = 2.625 − 0.125 − 0.375 + 3.375 = 5.5, Sxx = 5.
        assert!((slope(&noisy).unwrap() - 1.1).abs() < 1e-12);
        // Decreasing memory gives a negative slope rather than nothing.
        assert!(slope(&[(1.0, 10.0), (2.0, 4.0)]).unwrap() < 0.0);
        assert_eq!(slope(&[(5.0, 1.0)]), None);
        assert_eq!(slope(&[(5.0, 1.0), (5.0, 9.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    fn sample(connections: u32, rss_bytes: u64, fds: u64) -> IdleSample {
        IdleSample { connections, rss_bytes, fds, connect_s: 0.5 }
    }

    fn settings() -> IdleSettingsReport {
        IdleSettingsReport {
            upstream: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            connections: 3000,
            steps: vec![1000, 2000, 3000],
            pool_mode: "transaction",
            pool_size: 4,
            concurrent_logins: 256,
            nofile_before: 1024,
            nofile_after: 65_536,
        }
    }

    #[test]
    fn report_rows_and_slopes() {
        let mib = 1024 * 1024;
        let samples = [sample(1000, 40 * mib, 1020), sample(2000, 44 * mib, 2020), sample(3000, 48 * mib, 3020)];
        let r = IdleReport::new(settings(), sample(0, 30 * mib, 20), &samples, None);
        let per = r.steps.iter().map(|s| s.bytes_per_connection_since_first).collect::<Vec<_>>();
        assert_eq!(per, vec![None, Some(4194.304), Some(4194.304)]);
        assert!((r.bytes_per_connection.unwrap() - 4194.304).abs() < 1e-6);
        assert!((r.fds_per_connection.unwrap() - 1.0).abs() < 1e-9);
        let text = r.text();
        assert!(text.starts_with("PgWeir at rest: RSS 30.0 MiB, 20 fds (transaction mode, pool size 4)\n"), "{text}");
        assert!(text.contains("       1000     40.0  1020                       -     0.50\n"), "{text}");
        assert!(text.contains("       3000     48.0  3020                    4194     0.50\n"), "{text}");
        assert!(text.contains("4194 bytes (4.10 KiB) of RSS and 1.00 fds per idle connection"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["steps"][1]["connections"], 2000);
        assert_eq!(json["steps"][0]["bytes_per_connection_since_first"], serde_json::Value::Null);
        assert_eq!(json["settings"]["pool_size"], 4);
        assert_eq!(json["at_rest"]["rss_bytes"], 30 * mib);
        assert!(!text.contains("Stopped"), "{text}");
        assert_eq!(json["stopped"], serde_json::Value::Null);
        let one = IdleReport::new(settings(), sample(0, 1, 1), &samples[..1], Some("out of files".into()));
        assert_eq!(one.bytes_per_connection, None);
        let text = one.text();
        assert!(text.contains("needs at least two"), "{text}");
        assert!(text.ends_with("Stopped at 1000 of 3000 connections (the reason follows on stderr)\n"), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&one.to_json()).unwrap()["stopped"], "out of files");
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tpgweir\nVmPeak:\t  999 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 40000 kB\n";
        assert_eq!(vm_rss(status), Some(51_234 * 1024));
        assert_eq!(vm_rss("Name:\tzombie\n"), None);
        assert_eq!(vm_rss("VmRSS:\tlots\n"), None);
    }

    #[test]
    fn reads_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            20000                65536                files     \n";
        assert_eq!(open_files_limit(limits), Some(20_000));
        let unlimited = "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(open_files_limit(unlimited), None);
    }

    #[test]
    fn counts_client_connections() {
        let text = "# HELP pgweir_client_connections Client connections by state\n\
                    # TYPE pgweir_client_connections gauge\n\
                    pgweir_client_connections{state=\"active\"} 2\n\
                    pgweir_client_connections{state=\"idle\"} 14998\n\
                    pgweir_client_connections{state=\"waiting\"} 0\n\
                    pgweir_client_connections_other 7\n\
                    pgweir_client_logins_total 15000\n";
        assert_eq!(client_connections(text), Some(15_000));
        assert_eq!(client_connections("pgweir_client_logins_total 3\n"), None);
    }
}
