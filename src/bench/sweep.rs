//! Runs the sweep: the list of steps (per client count: direct, then PgWeir for each pool mode
//! and size, then each `--target`), and each step's life: start its PgWeir, connect its
//! clients, run them through warmup and measurement under a progress bar while polling the
//! upstream's client backends every 250 ms, then merge what the clients measured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{Client, Config};

use super::args::Settings;
use super::client::{self, Plan, Window};
use super::setup::{describe_config, server_connections, wait_quiet};
use super::stats::{new_histogram, LatencyMs, StepResult};
use super::target::{pgweir_client_config, PgweirProcess, Target};
use super::workload::Workload;
use super::BenchError;

/// How often the upstream's connections are counted (and the progress bar redrawn).
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a step waits for the previous step's server connections to go away.
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-client connect timeout, and how long a step waits for its first client to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a client has connected, how long the step waits for another before starting anyway.
const CONNECT_SETTLE: Duration = Duration::from_secs(1);

/// The steps of a sweep, in the order they run.
pub fn steps(settings: &Settings) -> Vec<(Target, u32)> {
    let mut out = Vec::new();
    for &clients in &settings.clients {
        if settings.direct {
            out.push((Target::Direct, clients));
        }
        if settings.pgweir {
            for &mode in &settings.pool_modes {
                for &size in &settings.pool_sizes {
                    out.push((Target::Pgweir { mode, size }, clients));
                }
            }
        }
        for t in &settings.targets {
            out.push((Target::Named { name: t.name.clone(), config: Box::new(t.config.clone()) }, clients));
        }
    }
    out
}

/// Everything the steps share.
pub struct Sweep<'a> {
    pub settings: &'a Settings,
    pub workload: Arc<Workload>,
    pub scale: u32,
    /// A direct connection to the upstream, for counting its client backends.
    pub monitor: Client,
    /// Client backends before the sweep started (other than the monitor).
    pub baseline: i64,
    /// The executable to start as PgWeir.
    pub exe: PathBuf,
}

impl Sweep<'_> {
    /// Runs every step in order; a step that cannot be set up ends the sweep.
    pub async fn run(&self) -> Result<Vec<StepResult>, BenchError> {
        let steps = steps(self.settings);
        let mut results = Vec::new();
        for (i, (target, clients)) in steps.iter().enumerate() {
            let r = self.step(target, *clients, (i + 1, steps.len())).await?;
            results.push(r);
        }
        Ok(results)
    }

    async fn step(&self, target: &Target, clients: u32, (n, of): (usize, usize)) -> Result<StepResult, BenchError> {
        wait_quiet(&self.monitor, self.baseline, QUIET_TIMEOUT).await;
        let label = target.label(clients);
        let (process, mut config) = match target {
            Target::Direct => (None, self.settings.upstream.clone()),
            Target::Named { config, .. } => (None, Config::clone(config)),
            Target::Pgweir { mode, size } => {
                let p = PgweirProcess::start(&self.exe, &self.settings.upstream_url, *mode, *size)
                    .await
                    .map_err(|source| BenchError::Pgweir { pool: format!("{mode} mode, pool size {size}"), source })?;
                let cfg = pgweir_client_config(&self.settings.upstream, p.port());
                (Some(p), cfg)
            }
        };
        config.connect_timeout(CONNECT_TIMEOUT).application_name("pgweir-bench");
        let (window_tx, window_rx) = watch::channel(None);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let done = Arc::new(AtomicU64::new(0));
        let plan = Plan {
            config: config.clone(),
            workload: Arc::clone(&self.workload),
            mode: self.settings.mode,
            scale: self.scale,
            window: window_rx,
            done: Arc::clone(&done),
        };
        // Dropped on an early return: the client tasks are aborted with it.
        let mut tasks = JoinSet::new();
        for _ in 0..clients {
            tasks.spawn(client::task(plan.clone(), ready_tx.clone(), rand::random()));
        }
        drop(ready_tx);
        if let Err(reason) = wait_connected(&mut ready_rx, clients).await {
            let reason = match &process {
                Some(p) if !p.stderr_text().trim().is_empty() => {
                    format!("{reason}; PgWeir said:\n{}", p.stderr_text().trim())
                }
                _ => reason,
            };
            return Err(BenchError::Connect {
                target: target.name().to_string(),
                addr: describe_config(&config),
                reason,
            });
        }

        let total = self.settings.warmup + self.settings.duration;
        let bar = progress_bar(&format!("[{n}/{of}] {label}"), total);
        let start = Instant::now();
        let measure_from = start + self.settings.warmup;
        let end = measure_from + self.settings.duration;
        window_tx.send_replace(Some(Window { measure_from, end }));

        let mut most: Option<i64> = None;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Bounded so a stuck poll cannot stretch the step.
            let poll =
                tokio::time::timeout_at(end.min(now + Duration::from_secs(1)), server_connections(&self.monitor));
            if let Ok(Ok(count)) = poll.await {
                most = Some(most.map_or(count, |m| m.max(count)));
            }
            let now = Instant::now();
            let elapsed = now.duration_since(start);
            bar.set_position(elapsed.as_millis() as u64);
            let rate = if now < measure_from {
                "warmup".to_string()
            } else {
                let secs = now.duration_since(measure_from).as_secs_f64().max(0.001);
                format!("{:.0} TPS", done.load(Ordering::Relaxed) as f64 / secs)
            };
            bar.set_message(format!("{:.1}s/{:.1}s {rate}", elapsed.as_secs_f64(), total.as_secs_f64()));
        }

        let mut latencies = new_histogram();
        let (mut transactions, mut errors, mut first_error, mut connected) = (0, 0, None, 0);
        while let Some(joined) = tasks.join_next().await {
            let o = joined.map_err(|e| BenchError::Setup(format!("a client task of {label} failed: {e}")))?;
            latencies.add(&o.latencies).expect("histograms have the same bounds");
            transactions += o.transactions;
            connected += u32::from(o.connected);
            errors += o.errors;
            if first_error.is_none() {
                first_error = o.first_error;
            }
        }
        if let Some(p) = process {
            p.stop().await;
        }
        let duration_s = self.settings.duration.as_secs_f64();
        let (mode, size) = match target {
            Target::Pgweir { mode, size } => (Some(*mode), Some(*size)),
            _ => (None, None),
        };
        let result = StepResult {
            target: target.name().to_string(),
            pool_mode: mode,
            pool_size: size,
            clients,
            clients_connected: connected,
            transactions,
            duration_s,
            tps: transactions as f64 / duration_s,
            latency_ms: LatencyMs::from_histogram(&latencies),
            errors,
            first_error,
            server_connections: most,
        };
        let waited = if connected < clients {
            format!(" ({} clients never got a connection)", clients - connected)
        } else {
            String::new()
        };
        let summary = format!(
            "{:.0} TPS, p99 {:.2} ms, {} errors, {} server connections{waited}",
            result.tps,
            result.latency_ms.p99,
            result.errors,
            result.server_connections.map_or_else(|| "?".to_string(), |n| n.to_string())
        );
        if bar.is_hidden() {
            eprintln!("[{n}/{of}] {label}: {summary}");
        }
        bar.finish_with_message(summary);
        Ok(result)
    }
}

/// Waits for the step's clients to connect: until all have, or (once one has) until none
/// more has for [`CONNECT_SETTLE`] (the rest wait for a server, as in a session pool smaller
/// than the client count, and keep waiting in the window). A connection error, or none at all
/// within [`CONNECT_TIMEOUT`], fails the step.
async fn wait_connected(ready: &mut mpsc::UnboundedReceiver<Result<(), String>>, clients: u32) -> Result<u32, String> {
    let mut connected = 0;
    let mut deadline = Instant::now() + CONNECT_TIMEOUT;
    while connected < clients {
        match tokio::time::timeout_at(deadline, ready.recv()).await {
            Ok(Some(Ok(()))) => {
                connected += 1;
                deadline = Instant::now() + CONNECT_SETTLE;
            }
            Ok(Some(Err(reason))) => return Err(reason),
            Ok(None) => return Err("a client task ended before connecting".into()),
            Err(_) if connected == 0 => {
                return Err(format!("no client connected within {}s", CONNECT_TIMEOUT.as_secs()));
            }
            Err(_) => break,
        }
    }
    Ok(connected)
}

fn progress_bar(prefix: &str, total: Duration) -> ProgressBar {
    let bar = ProgressBar::new(total.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("{prefix:34} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::args::BenchArgs;
    use crate::bench::stats::PoolMode;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn steps_run_per_client_count_direct_then_pools_then_targets() {
        let cli = Cli::try_parse_from([
            "bench",
            "--upstream",
            "postgres://u@h/db",
            "--direct",
            "--clients",
            "4,8",
            "--pool-sizes",
            "2,4",
            "--pool-modes",
            "transaction,session",
            "--target",
            "b=postgres://u@h:6433/db",
        ])
        .unwrap();
        let s = cli.bench.validate().unwrap();
        let names: Vec<String> = steps(&s).iter().map(|(t, c)| t.label(*c)).collect();
        assert_eq!(names.len(), 2 * (1 + 4 + 1));
        assert_eq!(
            &names[..6],
            &[
                "direct ×4",
                "pgweir transaction/2 ×4",
                "pgweir transaction/4 ×4",
                "pgweir session/2 ×4",
                "pgweir session/4 ×4",
                "b ×4",
            ]
        );
        assert_eq!(names[6], "direct ×8");
        assert!(matches!(steps(&s)[3].0, Target::Pgweir { mode: PoolMode::Session, size: 2 }));
    }
}
