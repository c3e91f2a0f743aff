//! One bench client: its own tokio-postgres connection, looping transactions of the workload
//! in the chosen [`Mode`] until the step's deadline, timing each one into its own histogram.
//! It connects first and says so, then waits for the step's [`Window`]; a connection that is
//! still pending then (a session pool smaller than the client count) keeps waiting until the
//! deadline. Transactions that start in the warmup are run but not counted; one still running
//! at the deadline is abandoned (the connection is dropped, so the server rolls it back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config};

use super::args::Mode;
use super::setup::{connect, describe_error};
use super::stats::{new_histogram, record};
use super::workload::{Script, Workload};

/// When a step's clients measure, set once they have connected.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Transactions that start before this are not counted.
    pub measure_from: Instant,
    /// No transaction completes after this.
    pub end: Instant,
}

/// What every client of a step shares.
#[derive(Clone)]
pub struct Plan {
    pub config: Config,
    pub workload: Arc<Workload>,
    pub mode: Mode,
    pub scale: u32,
    /// `None` until the step starts its clock.
    pub window: watch::Receiver<Option<Window>>,
    /// Counted transactions so far, across the step's clients (for the progress bar).
    pub done: Arc<AtomicU64>,
}

/// What one client measured.
pub struct Outcome {
    /// Whether it got a connection before the deadline.
    pub connected: bool,
    pub latencies: Histogram<u64>,
    pub transactions: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome { connected: false, latencies: new_histogram(), transactions: 0, errors: 0, first_error: None }
    }
}

/// Waits until the step has set its window (`None` if the step went away).
async fn window(rx: &mut watch::Receiver<Option<Window>>) -> Option<Window> {
    rx.wait_for(Option::is_some).await.ok().and_then(|w| *w)
}

/// A whole client: connects, reports the connection (or its error) on `ready`, then runs
/// transactions in the step's window.
pub async fn task(mut plan: Plan, ready: mpsc::UnboundedSender<Result<(), String>>, seed: u64) -> Outcome {
    let mut out = Outcome::new();
    let connect = BenchClient::connect(&plan.config, &plan.workload, plan.mode);
    let mut rx = plan.window.clone();
    // A connect still pending at the deadline is given up (both futures are ours alone).
    let gave_up = async {
        if let Some(w) = window(&mut rx).await {
            tokio::time::sleep_until(w.end).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let client = tokio::select! {
        c = connect => c,
        () = gave_up => return out,
    };
    let client = match client {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let msg = describe_error(&e);
            let _ = ready.send(Err(msg.clone()));
            // Counted if the clock was already running (a late connection failed).
            let counted = plan.window.borrow().is_some();
            note_error(&mut out, counted, msg);
            return out;
        }
    };
    out.connected = true;
    let Some(w) = window(&mut plan.window).await else {
        return out;
    };
    run(client, &plan, w, seed, out).await
}

/// A connected client, with its statements prepared in prepared mode.
pub struct BenchClient {
    client: Client,
    /// Per script, per statement (prepared mode only).
    prepared: Vec<Vec<tokio_postgres::Statement>>,
}

impl BenchClient {
    /// Connects and, in prepared mode, prepares every statement of the workload.
    pub async fn connect(
        config: &Config,
        workload: &Workload,
        mode: Mode,
    ) -> Result<BenchClient, tokio_postgres::Error> {
        let client = connect(config).await?;
        let mut prepared = Vec::new();
        if mode == Mode::Prepared {
            for script in workload.scripts() {
                let mut stmts = Vec::new();
                for st in script.statements() {
                    let types = vec![Type::INT8; st.param_count()];
                    stmts.push(client.prepare_typed(st.extended_sql(), &types).await?);
                }
                prepared.push(stmts);
            }
        }
        Ok(BenchClient { client, prepared })
    }

    /// Runs script `index` once with these variable values.
    pub async fn run_script(
        &self,
        index: usize,
        script: &Script,
        mode: Mode,
        values: &[i64],
    ) -> Result<(), tokio_postgres::Error> {
        for (k, st) in script.statements().iter().enumerate() {
            match mode {
                Mode::Simple => {
                    self.client.simple_query(&st.simple_sql(values)).await?;
                }
                Mode::Extended => {
                    let params = st.params(values);
                    let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                        params.iter().map(|v| (v as &(dyn ToSql + Sync), Type::INT8)).collect();
                    self.client.query_typed(st.extended_sql(), &typed).await?;
                }
                Mode::Prepared => {
                    let params = st.params(values);
                    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    self.client.query(&self.prepared[index][k], &refs).await?;
                }
            }
        }
        Ok(())
    }

    /// After a failed multi-statement script: end the transaction it may have left open.
    async fn recover(&self) {
        let _ = self.client.simple_query("ROLLBACK").await;
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

fn note_error(out: &mut Outcome, counted: bool, msg: String) {
    if counted {
        out.errors += 1;
        out.first_error.get_or_insert(msg);
    }
}

/// Loops transactions until the window ends. A lost connection is reopened (each failed attempt
/// counts as an error in the measured window).
async fn run(mut client: BenchClient, plan: &Plan, w: Window, seed: u64, mut out: Outcome) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values = Vec::new();
    loop {
        let start = Instant::now();
        if start >= w.end {
            break;
        }
        let counted = start >= w.measure_from;
        if client.is_closed() {
            match tokio::time::timeout_at(w.end, BenchClient::connect(&plan.config, &plan.workload, plan.mode)).await {
                Err(_) => break,
                Ok(Ok(c)) => client = c,
                Ok(Err(e)) => {
                    note_error(&mut out, counted, format!("reconnecting: {}", describe_error(&e)));
                    tokio::time::sleep_until((start + Duration::from_millis(100)).min(w.end)).await;
                }
            }
            continue;
        }
        let index = plan.workload.pick(&mut rng);
        let script = plan.workload.script(index);
        script.draw(plan.scale, &mut rng, &mut values);
        match tokio::time::timeout_at(w.end, client.run_script(index, script, plan.mode, &values)).await {
            Err(_) => break,
            Ok(Ok(())) => {
                if counted {
                    record(&mut out.latencies, start.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
                    out.transactions += 1;
                    plan.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => {
                note_error(&mut out, counted, describe_error(&e));
                if script.statements().len() > 1 && !client.is_closed() {
                    let _ = tokio::time::timeout_at(w.end, client.recover()).await;
                }
            }
        }
    }
    out
}
