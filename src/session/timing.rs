//! Request timing for SHOW QUERIES, the slow-query log and the per-request tracing span. A
//! request is a simple Query, or an extended batch up to its Sync that executes something; it
//! is timed from being forwarded to the ReadyForQuery that ends it (pipelined requests each
//! by their own, matched in order with the plan's count of answered requests) and recorded
//! under its statement's fingerprint (a batch under its first statement). Texts are shown
//! without literals or comments. Off (no fingerprinting at all) when neither
//! `metrics.top_queries` nor `metrics.slow_query` is set.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::proxy::RouteLabel;
use crate::metrics::Metrics;
use crate::route::cache::{fingerprint_into, without_literals};

/// Longest statement text kept or logged.
const MAX_TEXT: usize = 1000;
/// Fingerprints a session remembers having reported with their text.
const SEEN_KEPT: usize = 512;

/// A statement's shape: its fingerprint and its text without literals.
#[derive(Clone, Debug)]
pub struct Shape {
    pub fingerprint: u64,
    pub text: Arc<str>,
}

struct Current {
    fingerprint: u64,
    /// The text, when this session has not reported the fingerprint before.
    text: Option<String>,
    started: Instant,
    span: tracing::Span,
}

/// One session's timing state.
pub struct Timing {
    metrics: Option<Arc<Metrics>>,
    slow: Duration,
    key: Vec<u8>,
    literals: Vec<(usize, usize)>,
    seen: HashSet<u64, crate::metrics::queries::FingerprintHash>,
    /// The extended batch being sent: its first statement's shape, and whether it executes.
    batch: Option<(u64, Option<String>)>,
    executes: bool,
    /// What the next request forwarded is (set by `query` or `sync`).
    next: Option<(u64, Option<String>)>,
    /// Requests forwarded and not yet answered: the plan's index of each, and what to record.
    pending: VecDeque<(u64, Option<Current>)>,
    /// Time the request waited for a server (set by the session after a checkout).
    waited: Duration,
}

impl Timing {
    /// Off unless `metrics` keeps statements or `slow` is non-zero.
    pub fn new(metrics: Option<Arc<Metrics>>, slow: Duration) -> Timing {
        let on = metrics.as_ref().is_some_and(|m| m.queries.enabled()) || !slow.is_zero();
        Timing {
            metrics: metrics.filter(|_| on),
            slow,
            key: Vec::new(),
            literals: Vec::new(),
            seen: HashSet::default(),
            batch: None,
            executes: false,
            next: None,
            pending: VecDeque::new(),
            waited: Duration::ZERO,
        }
    }

    pub fn on(&self) -> bool {
        self.metrics.is_some()
    }

    /// SHOW QUERIES keeps texts (else the slow-query log needs each request's own).
    fn keeps(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.queries.enabled())
    }

    /// The fingerprint of `sql`, with its text when this session has not reported it yet.
    fn fingerprint(&mut self, sql: &str) -> (u64, Option<String>) {
        let fp = fingerprint_into(sql, &mut self.key, &mut self.literals);
        if self.seen.contains(&fp) && self.keeps() {
            return (fp, None);
        }
        if self.seen.len() >= SEEN_KEPT {
            self.seen.clear();
        }
        self.seen.insert(fp);
        (fp, Some(without_literals(sql, MAX_TEXT)))
    }

    /// The shape of a statement being prepared (kept with it for later Binds).
    pub fn shape(&mut self, sql: &str) -> Option<Shape> {
        if !self.on() {
            return None;
        }
        let fp = fingerprint_into(sql, &mut self.key, &mut self.literals);
        Some(Shape { fingerprint: fp, text: without_literals(sql, MAX_TEXT).into() })
    }

    /// A simple Query whose shape is known is about to be forwarded.
    pub fn query_shape(&mut self, f: &super::shapes::Facts) {
        if !self.on() {
            return;
        }
        let fp = f.fingerprint;
        let unseen = !self.seen.contains(&fp) || !self.keeps();
        if unseen && self.seen.len() >= SEEN_KEPT {
            self.seen.clear();
        }
        self.seen.insert(fp);
        self.next = Some((fp, unseen.then(|| f.shown.to_string())));
    }

    /// A simple Query is about to be forwarded.
    pub fn query(&mut self, sql: &str) {
        if self.on() {
            self.next = Some(self.fingerprint(sql));
        }
    }

    /// A Parse of `sql` is forwarded (the unnamed statement, or without statement tracking).
    pub fn parse(&mut self, sql: &str) {
        if self.on() && self.batch.is_none() {
            self.batch = Some(self.fingerprint(sql));
        }
    }

    /// A Bind of a statement of known shape is forwarded.
    pub fn bind(&mut self, shape: Option<&Shape>) {
        let Some(s) = shape else { return };
        if !self.on() || self.batch.is_some() {
            return;
        }
        let text = (self.seen.insert(s.fingerprint) || !self.keeps()).then(|| s.text.to_string());
        self.batch = Some((s.fingerprint, text));
    }

    pub fn execute(&mut self) {
        self.executes = true;
    }

    /// A Sync is about to be forwarded: the batch, if it executed something, is timed.
    pub fn sync(&mut self) {
        let batch = self.batch.take();
        let executes = std::mem::take(&mut self.executes);
        let Some((fp, text)) = batch else { return };
        if !executes {
            if text.is_some() {
                // Its text was not reported: report it with the next request of this shape.
                self.seen.remove(&fp);
            }
            return;
        }
        self.next = Some((fp, text));
    }

    /// A request (Query, Sync or FunctionCall) is forwarded as the plan's request `index`.
    pub fn forwarded(&mut self, index: u64) {
        let next = self.next.take();
        if !self.on() {
            return;
        }
        let current = next.map(|(fingerprint, text)| {
            let span = tracing::debug_span!(
                "request",
                fingerprint = %format_args!("{fingerprint:016x}"),
                route = tracing::field::Empty,
                pool_wait_us = tracing::field::Empty,
                server_us = tracing::field::Empty,
            );
            Current { fingerprint, text, started: Instant::now(), span }
        });
        self.pending.push_back((index, current));
    }

    /// The plan has seen `answered` requests answered: those are recorded.
    pub fn answered_up_to(&mut self, answered: u64, route: RouteLabel) {
        while self.pending.front().is_some_and(|(i, _)| *i < answered) {
            let Some((_, c)) = self.pending.pop_front() else { break };
            if let Some(c) = c {
                let took = c.started.elapsed();
                let waited = std::mem::take(&mut self.waited);
                self.record(c, route, took, waited);
            }
        }
    }

    /// A new server is attached: nothing forwarded is owed any more.
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    /// The session waited this long for the server the next request runs on.
    pub fn waited(&mut self, d: Duration) {
        self.waited = d;
    }

    /// A request the proxy answered itself (from the cache) in `took`.
    pub fn answered(&mut self, sql: &str, route: RouteLabel, took: Duration) {
        if !self.on() {
            return;
        }
        let (fingerprint, text) = self.fingerprint(sql);
        let c = Current { fingerprint, text, started: Instant::now(), span: tracing::Span::none() };
        self.record(c, route, took, Duration::ZERO);
    }

    fn record(&mut self, c: Current, route: RouteLabel, took: Duration, waited: Duration) {
        let Some(m) = &self.metrics else { return };
        let route_name = match route {
            RouteLabel::Primary => "primary",
            RouteLabel::Replica => "replica",
            RouteLabel::Cache => "cache",
            RouteLabel::Shard => "shard",
        };
        c.span.record("route", route_name);
        c.span.record("pool_wait_us", waited.as_micros() as u64);
        c.span.record("server_us", took.as_micros() as u64);
        if !self.slow.is_zero() && took + waited >= self.slow {
            let text = c.text.clone().or_else(|| m.queries.text(c.fingerprint)).unwrap_or_default();
            tracing::warn!(
                fingerprint = %format_args!("{:016x}", c.fingerprint),
                route = route_name,
                total_ms = (took + waited).as_secs_f64() * 1e3,
                pool_wait_ms = waited.as_secs_f64() * 1e3,
                server_ms = took.as_secs_f64() * 1e3,
                statement = %text,
                "slow query"
            );
        }
        m.queries.record(c.fingerprint, route, took, c.text);
    }

    /// The server went away or the request was abandoned: nothing to record.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.next = None;
        self.batch = None;
        self.executes = false;
    }
}
