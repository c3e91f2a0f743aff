//! The `pgweir` command: `run` the proxy, `check` a config file, `bench` pool settings.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgweir::config::{self, Overrides};

#[derive(Parser)]
#[command(name = "pgweir", version, about = "PostgreSQL-wire proxy: pooling, read/write split, result cache, sharding")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (with no arguments: 127.0.0.1:6432 in front of postgres://localhost:5432).
    Run(RunArgs),
    /// Validate a config file; exits non-zero naming the key and line of the first problem.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Load-test PgWeir at several pool sizes (and the server or other poolers) and recommend one.
    Bench(Box<pgweir::bench::BenchArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file (TOML). Flags below override its values.
    #[arg(short = 'c', long = "config", env = "PGWEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// The primary server: postgres://[user[:password]@]host[:port][/db].
    #[arg(long)]
    upstream: Option<String>,
    /// A replica server URL (repeatable).
    #[arg(long = "replica")]
    replicas: Vec<String>,
    /// session or transaction.
    #[arg(long)]
    pool_mode: Option<String>,
    /// Server connections per (database, user) pool.
    #[arg(long)]
    pool_size: Option<u32>,
    /// Client authentication: trust, md5 or scram-sha-256.
    #[arg(long)]
    auth: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config: path } => match config::load(Some(&path), &Overrides::default()) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Bench(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(pgweir::bench::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgweir bench: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) => {
            let overrides = Overrides {
                listen: args.listen,
                upstream: args.upstream,
                replicas: args.replicas,
                pool_mode: args.pool_mode,
                pool_size: args.pool_size,
                auth: args.auth,
            };
            let cfg = match config::load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let _logs = pgweir::logging::init(args.log_json);
            // Every client and server connection holds a descriptor: take what the system allows.
            match pgweir::net::raise_nofile() {
                Ok((_, limit)) if limit < u64::from(cfg.pool.max_client_connections) + 100 => tracing::warn!(
                    limit,
                    max_client_connections = cfg.pool.max_client_connections,
                    "open-file limit below pool.max_client_connections: clients past it are refused at accept"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
            }
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if cfg.workers > 0 {
                builder.worker_threads(cfg.workers);
            }
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                match pgweir::app::Proxy::start(cfg).await {
                    Ok(p) => {
                        p.run_until_signalled().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("pgweir: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
