//! The `pgweir bench` command line (clap) and its validation into [`Settings`]: lists,
//! durations, modes and `--target NAME=URL` pairs are checked here, before anything connects,
//! so a typo fails with a sentence naming the flag.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::raw::DurationValue;

use super::stats::PoolMode;
use super::BenchError;

/// `pgweir bench`: sweeps pool sizes and client counts against PgWeir (and optionally the
/// server itself and other poolers) and recommends a pool size.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The PostgreSQL server: postgres://user[:password]@host[:port]/dbname. Clients log in
    /// with its user, password and database.
    #[arg(long)]
    pub upstream: String,
    /// select-only, tpcb-like, read-heavy, or a SQL file (one statement per line).
    #[arg(long, default_value = "select-only")]
    pub workload: String,
    /// How statements are sent: simple (Query), extended (unnamed Parse/Bind/Execute) or
    /// prepared (named statements prepared once per client).
    #[arg(long, default_value = "simple")]
    pub mode: String,
    /// Client counts to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub clients: Vec<u32>,
    /// PgWeir pool sizes to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32")]
    pub pool_sizes: Vec<u32>,
    /// PgWeir pool modes to sweep: transaction, session (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "transaction")]
    pub pool_modes: Vec<String>,
    /// Measured time per step (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time per step before the measurement starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Scale factor: rows for --init and the ranges of :aid, :bid, :tid (default: the
    /// number of rows in pgbench_branches, as pgbench does; 1 with --init).
    #[arg(long)]
    pub scale: Option<u32>,
    /// Create and fill the pgbench tables first (like pgbench -i -s SCALE); drops them if
    /// they exist.
    #[arg(long)]
    pub init: bool,
    /// Also measure the upstream itself, without a proxy.
    #[arg(long)]
    pub direct: bool,
    /// Also measure another endpoint (e.g. PgBouncer): NAME=postgres://... (repeatable).
    #[arg(long = "target", value_name = "NAME=URL")]
    pub targets: Vec<String>,
    /// Do not start PgWeir (measure only --direct and --target).
    #[arg(long)]
    pub no_pgweir: bool,
    /// A pool size is recommended only if its p99 latency is under this.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub p99_max: Duration,
    /// Write every result and the settings as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of TPS and p99 against pool size to this file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Idle mode: instead of the sweep, open this many idle client connections to a PgWeir of
    /// its own and measure its memory (RSS) and open files per connection.
    #[arg(long, value_name = "N", conflicts_with_all = IDLE_CONFLICTS)]
    pub idle: Option<u32>,
    /// Connection counts at which idle mode measures (comma-separated; default N/4, N/2, 3N/4, N).
    #[arg(long, value_delimiter = ',', value_name = "N,...", requires = "idle")]
    pub idle_steps: Vec<u32>,
}

/// The sweep's flags, which mean nothing in idle mode.
const IDLE_CONFLICTS: [&str; 14] = [
    "workload",
    "mode",
    "clients",
    "pool_sizes",
    "pool_modes",
    "duration",
    "warmup",
    "scale",
    "init",
    "direct",
    "targets",
    "no_pgweir",
    "p99_max",
    "chart",
];

fn parse_duration(s: &str) -> Result<Duration, String> {
    DurationValue::Text(s.to_string()).parse()
}

/// How each client sends its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Simple Query messages with the values written into the text.
    Simple,
    /// Parse/Bind/Execute on the unnamed statement with int8 parameters, one round trip.
    Extended,
    /// Every statement prepared once per connection, then Bind/Execute.
    Prepared,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Extended => "extended",
            Mode::Prepared => "prepared",
        }
    }
}

/// A `--target NAME=URL`.
#[derive(Debug, Clone)]
pub struct NamedTarget {
    pub name: String,
    pub url: String,
    pub config: tokio_postgres::Config,
}

/// Validated settings for a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub upstream_url: String,
    pub upstream: tokio_postgres::Config,
    /// `--workload` as given: a built-in name or a file path.
    pub workload: String,
    pub mode: Mode,
    pub clients: Vec<u32>,
    pub pool_sizes: Vec<u32>,
    pub pool_modes: Vec<PoolMode>,
    pub duration: Duration,
    pub warmup: Duration,
    pub scale: Option<u32>,
    pub init: bool,
    pub direct: bool,
    pub pgweir: bool,
    pub targets: Vec<NamedTarget>,
    pub p99_max: Duration,
    pub json: Option<PathBuf>,
    pub chart: Option<PathBuf>,
    /// `--idle`: the idle-connection memory mode instead of the sweep.
    pub idle: Option<IdleSettings>,
}

/// Validated `--idle` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleSettings {
    /// Connections at each measurement, ascending, the last one `--idle N`.
    pub steps: Vec<u32>,
}

impl IdleSettings {
    /// The connection count of the last step.
    pub fn connections(&self) -> u32 {
        self.steps.last().copied().unwrap_or(0)
    }
}

/// `--idle N` with `--idle-steps`: the given counts (sorted, N added as the last one), or a
/// quarter, half, three quarters and all of N.
fn idle_settings(n: u32, steps: &[u32]) -> Result<IdleSettings, BenchError> {
    if n == 0 {
        return Err(usage("--idle must be above 0"));
    }
    let mut v = if steps.is_empty() {
        vec![n.div_ceil(4), n.div_ceil(2), (n / 4 * 3).max(1), n]
    } else {
        let v = positive_list("--idle-steps", steps)?;
        if let Some(&over) = v.iter().find(|&&s| s > n) {
            return Err(usage(format!("--idle-steps: {over} is above --idle {n}")));
        }
        v
    };
    v.push(n);
    v.sort_unstable();
    v.dedup();
    Ok(IdleSettings { steps: v })
}

fn usage(msg: impl Into<String>) -> BenchError {
    BenchError::Usage(msg.into())
}

/// Parses a `postgres://` URL into a client config (user `postgres` when it names none).
pub fn parse_url(flag: &str, url: &str) -> Result<tokio_postgres::Config, BenchError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(usage(format!("{flag}: expected a postgres://user@host:port/dbname URL, got {url:?}")));
    }
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| usage(format!("{flag}: {url:?}: {e}")))?;
    if cfg.get_hosts().is_empty() {
        return Err(usage(format!("{flag}: {url:?} names no host")));
    }
    if cfg.get_user().is_none() {
        cfg.user("postgres");
    }
    Ok(cfg)
}

fn positive_list(flag: &str, values: &[u32]) -> Result<Vec<u32>, BenchError> {
    if values.is_empty() || values.contains(&0) {
        return Err(usage(format!("{flag}: expected a comma-separated list of numbers above 0")));
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

impl BenchArgs {
    /// Checks every flag; the workload file is read later.
    pub fn validate(&self) -> Result<Settings, BenchError> {
        let upstream = parse_url("--upstream", &self.upstream)?;
        let mode = match self.mode.as_str() {
            "simple" => Mode::Simple,
            "extended" => Mode::Extended,
            "prepared" => Mode::Prepared,
            m => return Err(usage(format!("--mode: {m:?} is not simple, extended or prepared"))),
        };
        let mut pool_modes = Vec::new();
        for m in &self.pool_modes {
            let pm = PoolMode::parse(m)
                .ok_or_else(|| usage(format!("--pool-modes: {m:?} is not transaction or session")))?;
            if !pool_modes.contains(&pm) {
                pool_modes.push(pm);
            }
        }
        if pool_modes.is_empty() {
            return Err(usage("--pool-modes: name at least one of transaction, session"));
        }
        if self.duration.is_zero() {
            return Err(usage("--duration must be above 0"));
        }
        let mut targets: Vec<NamedTarget> = Vec::new();
        for t in &self.targets {
            let (name, url) =
                t.split_once('=').ok_or_else(|| usage(format!("--target: expected NAME=URL, got {t:?}")))?;
            let name = name.trim();
            if name.is_empty() || name == "direct" || name == "pgweir" || targets.iter().any(|x| x.name == name) {
                return Err(usage(format!("--target: {name:?} is empty, reserved (direct, pgweir) or given twice")));
            }
            let config = parse_url(&format!("--target {name}"), url)?;
            targets.push(NamedTarget { name: name.to_string(), url: url.to_string(), config });
        }
        let pgweir = !self.no_pgweir;
        if !pgweir && !self.direct && targets.is_empty() {
            return Err(usage("nothing to measure: --no-pgweir without --direct or --target"));
        }
        if !pgweir && self.chart.is_some() {
            return Err(usage("--chart plots PgWeir's pool sizes, so it needs PgWeir (drop --no-pgweir)"));
        }
        if self.scale == Some(0) {
            return Err(usage("--scale must be above 0"));
        }
        let idle = self.idle.map(|n| idle_settings(n, &self.idle_steps)).transpose()?;
        Ok(Settings {
            upstream_url: self.upstream.clone(),
            upstream,
            workload: self.workload.clone(),
            mode,
            clients: positive_list("--clients", &self.clients)?,
            pool_sizes: positive_list("--pool-sizes", &self.pool_sizes)?,
            pool_modes,
            duration: self.duration,
            warmup: self.warmup,
            scale: self.scale,
            init: self.init,
            direct: self.direct,
            pgweir,
            targets,
            p99_max: self.p99_max,
            json: self.json.clone(),
            chart: self.chart.clone(),
            idle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut full = vec!["bench", "--upstream", "postgres://app:pw@db:5433/shop"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        cli.bench.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let s = parse(&[]).unwrap();
        assert_eq!((s.clients.as_slice(), s.pool_sizes.as_slice()), (&[16, 64][..], &[2, 4, 8, 16, 32][..]));
        assert_eq!(s.pool_modes, vec![PoolMode::Transaction]);
        assert_eq!(
            (s.duration, s.warmup, s.p99_max),
            (Duration::from_secs(10), Duration::from_secs(2), Duration::from_millis(50))
        );
        assert_eq!((s.mode, s.workload.as_str(), s.pgweir, s.direct), (Mode::Simple, "select-only", true, false));
        assert_eq!(s.upstream.get_user(), Some("app"));
        assert_eq!(s.upstream.get_dbname(), Some("shop"));
        assert_eq!(s.upstream.get_ports(), &[5433]);
    }

    #[test]
    fn lists_durations_and_targets() {
        let s = parse(&[
            "--clients",
            "64,4,4",
            "--pool-sizes",
            "8,2",
            "--pool-modes",
            "transaction,session",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--mode",
            "prepared",
            "--target",
            "bouncer=postgres://app@127.0.0.1:6433/shop",
            "--direct",
        ])
        .unwrap();
        assert_eq!((s.clients, s.pool_sizes), (vec![4, 64], vec![2, 8]));
        assert_eq!(s.pool_modes, vec![PoolMode::Transaction, PoolMode::Session]);
        assert_eq!((s.duration, s.warmup), (Duration::from_millis(500), Duration::ZERO));
        assert_eq!(s.targets.len(), 1);
        assert_eq!((s.targets[0].name.as_str(), s.targets[0].config.get_ports()), ("bouncer", &[6433][..]));
    }

    #[test]
    fn idle_steps() {
        assert_eq!(parse(&[]).unwrap().idle, None);
        let s = parse(&["--idle", "15000"]).unwrap().idle.unwrap();
        assert_eq!(s.steps, vec![3750, 7500, 11_250, 15_000]);
        assert_eq!(s.connections(), 15_000);
        let s = parse(&["--idle", "15000", "--idle-steps", "10000,1000,5000"]).unwrap().idle.unwrap();
        assert_eq!(s.steps, vec![1000, 5000, 10_000, 15_000]);
        assert_eq!(parse(&["--idle", "1"]).unwrap().idle.unwrap().steps, vec![1]);
        assert_eq!(parse(&["--idle", "3"]).unwrap().idle.unwrap().steps, vec![1, 2, 3]);
        // The sweep's flags are refused with --idle; --idle-steps needs --idle.
        for args in
            [&["--idle", "10", "--clients", "4"][..], &["--idle", "10", "--direct"][..], &["--idle-steps", "5"][..]]
        {
            let mut full = vec!["bench", "--upstream", "postgres://app@db/shop"];
            full.extend_from_slice(args);
            assert!(Cli::try_parse_from(full).is_err(), "{args:?}");
        }
    }

    #[test]
    fn mistakes_name_the_flag() {
        for (args, want) in [
            (&["--mode", "fast"][..], "--mode"),
            (&["--pool-modes", "statement"][..], "--pool-modes"),
            (&["--clients", "0"][..], "--clients"),
            (&["--duration", "0s"][..], "--duration"),
            (&["--duration", "ten"][..], "--duration"),
            (&["--target", "bouncer"][..], "NAME=URL"),
            (&["--target", "direct=postgres://x@h/db"][..], "reserved"),
            (&["--target", "b=host=x"][..], "--target b"),
            (&["--no-pgweir"][..], "nothing to measure"),
            (&["--no-pgweir", "--direct", "--chart", "c.svg"][..], "--chart"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        for (args, want) in [
            (&["--idle", "0"][..], "--idle must be above 0"),
            (&["--idle", "100", "--idle-steps", "50,200"][..], "200 is above --idle 100"),
            (&["--idle", "100", "--idle-steps", "0"][..], "--idle-steps"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = Cli::try_parse_from(["bench", "--upstream", "localhost"]).unwrap().bench.validate().unwrap_err();
        assert!(e.to_string().contains("--upstream"), "{e}");
    }
}
