//! `pgweir bench`: a local load generator that sweeps PgWeir's pool size (and pool mode and
//! client count), optionally next to the server itself and other poolers, and recommends the
//! smallest pool that keeps throughput and tail latency. It owns its own PgWeir processes
//! (started from this executable, one per step) and never changes anything on the upstream
//! but the pgbench tables (`--init`) and what the workload itself does.
//!
//! Parts: `args` (flags → settings), `workload` (scripts, `:var`s; pure), `setup` (connect,
//! `--init`, table checks, connection counting), `target` (endpoints, PgWeir processes),
//! `client` (one connection's transaction loop), `sweep` (steps and progress), `stats`
//! (histograms, results; pure), `recommend` (the rule; pure), `report` (table and JSON; pure),
//! `chart` (the SVG). `idle` is the other mode (`--idle N`: PgWeir's memory per idle client
//! connection), with `idle_report` (samples, slope, table and JSON; pure).

mod args;
mod chart;
mod client;
mod idle;
mod idle_report;
mod recommend;
mod report;
mod setup;
mod stats;
mod sweep;
mod target;
mod workload;

use std::path::Path;
use std::sync::Arc;

pub use args::{BenchArgs, IdleSettings, Mode, Settings};
pub use chart::ChartError;
pub use recommend::{recommend, Recommendation};
pub use stats::{LatencyMs, PoolMode, StepResult};
pub use target::TargetError;
pub use workload::{Workload, WorkloadError};

use client::BenchClient;
use report::{Report, SettingsReport, TargetReport};

/// Why a bench run could not be set up or finished (measured errors are results, not this).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag's value is wrong.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the workload file {path}: {source}")]
    ReadWorkload { path: String, source: std::io::Error },
    #[error("workload file {path}, {source}")]
    Workload { path: String, source: WorkloadError },
    #[error("cannot connect to {target} ({addr}): {reason}")]
    Connect { target: String, addr: String, reason: String },
    /// The upstream is not ready for the workload (tables missing, ...).
    #[error("{0}")]
    Setup(String),
    #[error("--init failed at {statement:?}: {reason}")]
    Init { statement: String, reason: String },
    #[error("the {workload} workload fails on the upstream before the sweep: {reason}")]
    WorkloadRun { workload: String, reason: String },
    #[error("cannot find this executable to start PgWeir: {0}")]
    Exe(std::io::Error),
    #[error("cannot start PgWeir ({pool}): {source}")]
    Pgweir { pool: String, source: TargetError },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(transparent)]
    Chart(#[from] ChartError),
    /// Idle mode could not reach or measure its connection count.
    #[error("{0}")]
    Idle(String),
}

/// A built-in workload by name, else the file at that path.
fn load_workload(spec: &str) -> Result<Workload, BenchError> {
    if let Some(w) = Workload::builtin(spec) {
        return Ok(w);
    }
    let text = std::fs::read_to_string(spec).map_err(|source| BenchError::ReadWorkload {
        path: format!("{spec} (not one of {})", Workload::BUILTINS.join(", ")),
        source,
    })?;
    Workload::from_file(spec, &text).map_err(|source| BenchError::Workload { path: spec.to_string(), source })
}

/// Prepares the upstream (init or checks) and returns the scale to draw variables with.
async fn prepare_upstream(
    settings: &Settings,
    workload: &Workload,
    monitor: &tokio_postgres::Client,
) -> Result<u32, BenchError> {
    if settings.init {
        let scale = settings.scale.unwrap_or(1);
        eprintln!("creating the pgbench tables at scale {scale} ({} accounts)", u64::from(scale) * 100_000);
        setup::init(monitor, scale).await?;
        return Ok(scale);
    }
    if workload.is_builtin() {
        let db = settings.upstream.get_dbname().or(settings.upstream.get_user()).unwrap_or("postgres");
        setup::check_tables(monitor, db).await?;
    }
    if let Some(s) = settings.scale {
        return Ok(s);
    }
    match setup::branches(monitor).await? {
        Some(0) if workload.is_builtin() => Err(BenchError::Setup(
            "pgbench_branches is empty, so the scale is unknown: run with --init or --scale".into(),
        )),
        Some(n) if n > 0 => Ok(n),
        _ => Ok(1),
    }
}

/// Runs each of the workload's scripts once on the upstream, so a broken file or a missing
/// table fails with the server's message instead of as millions of errors.
async fn try_workload(settings: &Settings, workload: &Arc<Workload>, scale: u32) -> Result<(), BenchError> {
    let mut cfg = settings.upstream.clone();
    cfg.application_name("pgweir-bench");
    let c = BenchClient::connect(&cfg, workload, settings.mode)
        .await
        .map_err(|e| BenchError::WorkloadRun { workload: workload.name().into(), reason: setup::describe_error(&e) })?;
    let mut rng = rand::rng();
    let mut values = Vec::new();
    for (i, script) in workload.scripts().enumerate() {
        script.draw(scale, &mut rng, &mut values);
        c.run_script(i, script, settings.mode, &values).await.map_err(|e| BenchError::WorkloadRun {
            workload: workload.name().into(),
            reason: setup::describe_error(&e),
        })?;
    }
    Ok(())
}

fn settings_report(s: &Settings, workload: &Workload, scale: u32) -> SettingsReport {
    SettingsReport {
        upstream: report::mask_password(&s.upstream_url),
        workload: workload.name().to_string(),
        mode: s.mode.as_str().to_string(),
        clients: s.clients.clone(),
        pool_sizes: s.pool_sizes.clone(),
        pool_modes: s.pool_modes.clone(),
        duration_s: s.duration.as_secs_f64(),
        warmup_s: s.warmup.as_secs_f64(),
        scale,
        init: s.init,
        direct: s.direct,
        pgweir: s.pgweir,
        targets: s
            .targets
            .iter()
            .map(|t| TargetReport { name: t.name.clone(), url: report::mask_password(&t.url) })
            .collect(),
        p99_max_ms: s.p99_max.as_secs_f64() * 1000.0,
    }
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write { path: path.display().to_string(), source })
}

/// Runs `pgweir bench`: validates the flags, prepares the upstream, runs the sweep, prints the
/// table and the recommendation, and writes `--json` and `--chart` (or, with `--idle`, runs
/// idle mode instead).
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let settings = args.validate()?;
    if let Some(idle) = &settings.idle {
        return idle::run(&settings, idle).await;
    }
    let workload = Arc::new(load_workload(&settings.workload)?);
    let exe = if settings.pgweir { std::env::current_exe().map_err(BenchError::Exe)? } else { Default::default() };
    let mut monitor_cfg = settings.upstream.clone();
    monitor_cfg.connect_timeout(std::time::Duration::from_secs(10)).application_name("pgweir-bench monitor");
    let monitor = setup::connect_for("the upstream", &monitor_cfg).await?;
    let baseline = setup::server_connections(&monitor).await.map_err(|e| {
        BenchError::Setup(format!("cannot read pg_stat_activity on the upstream: {}", setup::describe_error(&e)))
    })?;
    for t in &settings.targets {
        // Fail before the sweep rather than in the middle of it.
        let mut cfg = t.config.clone();
        cfg.connect_timeout(std::time::Duration::from_secs(10)).application_name("pgweir-bench");
        drop(setup::connect_for(&t.name, &cfg).await?);
    }
    let scale = prepare_upstream(&settings, &workload, &monitor).await?;
    try_workload(&settings, &workload, scale).await?;

    let sweep = sweep::Sweep { settings: &settings, workload: Arc::clone(&workload), scale, monitor, baseline, exe };
    let results = sweep.run().await?;
    let p99_max_ms = settings.p99_max.as_secs_f64() * 1000.0;
    let recommendations = recommend(&results, p99_max_ms);

    print!("{}", report::table(&results));
    println!();
    if recommendations.is_empty() {
        println!("No pool size recommendation: PgWeir was not measured (--no-pgweir).");
    } else {
        println!(
            "Recommended pool size (the smallest within 5% of the best TPS, with p99 under {p99_max_ms} ms, no errors and every client connected):"
        );
        for r in &recommendations {
            println!("  {}", r.text);
        }
    }
    if let Some(path) = &settings.json {
        let s = settings_report(&settings, &workload, scale);
        write(path, &Report { settings: &s, results: &results, recommendations: &recommendations }.to_json())?;
    }
    if let Some(path) = &settings.chart {
        let title = format!("pgweir bench: {}, {} mode, scale {scale}", workload.name(), settings.mode.as_str());
        write(path, &chart::render(&results, p99_max_ms, &title)?)?;
    }
    Ok(())
}
