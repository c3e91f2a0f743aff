//! The cache half of `Proto`: which tables the statements forwarded to the server may write
//! (their versions are bumped before the client sees the ReadyForQuery that ends the
//! transaction: `Attached::Invalidate`), and the tee that fills a cache entry from the
//! response to a missed request. Pure: the session does the Redis I/O.

use std::collections::{HashMap, VecDeque};

use super::proto::Proto;
use super::stmts;
use crate::cache::{writes, Fill, Writes};
use crate::wire::frame::cstr;
use crate::wire::tag;

/// Named statements whose writes a session-mode client may hold before the map gives up (and
/// every unknown named statement is then taken to write anything).
const NAMED_WRITES: usize = 10_000;

/// Per-session cache bookkeeping.
#[derive(Default)]
pub struct CacheState {
    /// Writes by the number of the server ReadyForQuery that completes them.
    pending: VecDeque<(u64, Writes)>,
    /// ReadyForQuery messages received from servers so far.
    rfq_seen: u64,
    /// Writes whose transaction just ended: bump them, then let the ReadyForQuery through.
    pub due: Option<Writes>,
    /// Session mode: named statements that write (names are not rewritten there).
    named: HashMap<String, Writes>,
    named_overflow: bool,
    unnamed: Writes,
    /// The response being teed into a cache entry.
    pub fill: Option<Fill>,
}

impl Proto {
    /// Notes what a client message forwarded to the server may write.
    pub(super) fn note_writes(&mut self, t: u8, body: &[u8], facts: Option<&super::shapes::Facts>) {
        if self.cache.is_none() {
            return;
        }
        let w = match t {
            tag::QUERY if facts.is_some_and(|f| f.no_writes) => Writes::None,
            tag::QUERY => writes(&crate::wire::text(body.strip_suffix(&[0]).unwrap_or(body))),
            tag::PARSE => {
                let Some(p) = stmts::parse_parse(body) else { return };
                let w = writes(&crate::wire::text(p.query));
                if p.name.is_empty() {
                    self.cstate.unnamed = w.clone();
                } else if !self.rewrite {
                    let named = &mut self.cstate.named;
                    if w.is_none() {
                        named.remove(p.name);
                    } else if named.len() < NAMED_WRITES || named.contains_key(p.name) {
                        named.insert(p.name.to_string(), w.clone());
                    } else {
                        self.cstate.named_overflow = true;
                    }
                }
                w
            }
            tag::BIND => {
                let Some((_, rest)) = cstr(body) else { return };
                let Some((stmt, _)) = cstr(rest) else { return };
                let stmt = crate::wire::text(stmt);
                if stmt.is_empty() {
                    self.cstate.unnamed.clone()
                } else if self.rewrite {
                    match self.stmts.get(&stmt).and_then(|d| {
                        stmts::parse_parse(&d.parse_frame[5..]).map(|p| writes(&crate::wire::text(p.query)))
                    }) {
                        Some(w) => w,
                        None => return,
                    }
                } else {
                    match self.cstate.named.get(stmt.as_ref()) {
                        Some(w) => w.clone(),
                        None if self.cstate.named_overflow => Writes::Any,
                        None => return,
                    }
                }
            }
            _ => return,
        };
        if !w.is_none() {
            // Completed by the ReadyForQuery after every boundary owed now, plus its own.
            let n = self.cstate.rfq_seen + self.plan.pending_boundaries() as u64 + 1;
            self.cstate.pending.push_back((n, w));
        }
    }

    /// A ReadyForQuery with `status` is next from the server: true when writes are due first
    /// (their transaction ended), which are then in `cstate.due`.
    pub(super) fn writes_due(&mut self, status: u8) -> bool {
        let n = self.cstate.rfq_seen + 1;
        if status != b'I' || self.cstate.pending.front().is_none_or(|(i, _)| *i > n) {
            return false;
        }
        let mut due = Writes::None;
        while let Some((i, w)) = self.cstate.pending.front() {
            if *i > n {
                break;
            }
            due.merge(w);
            self.cstate.pending.pop_front();
        }
        self.cstate.due = Some(due);
        true
    }

    pub(super) fn ready_seen(&mut self) {
        self.cstate.rfq_seen += 1;
    }

    /// Writes forwarded whose outcome is unknown (the server or client went away): bump them
    /// anyway, since they may have committed.
    pub fn take_unsettled_writes(&mut self) -> Writes {
        let mut all = Writes::None;
        for (_, w) in self.cstate.pending.drain(..) {
            all.merge(&w);
        }
        if let Some(d) = self.cstate.due.take() {
            all.merge(&d);
        }
        all
    }

    /// One whole frame forwarded to the client: feed the fill, and store it when it ends.
    pub(super) fn tee(&mut self, t: u8, frame: &[u8]) {
        let Some(fill) = self.cstate.fill.as_mut() else { return };
        if let crate::cache::request::TeeStep::Done(stored) = fill.tee.frame(t, frame) {
            let fill = self.cstate.fill.take();
            if let (Some(cache), Some(fill)) = (&self.cache, fill) {
                cache.complete(fill, stored);
            }
        }
    }

    /// A frame streamed through in pieces: the fill cannot hold it.
    pub(super) fn tee_streamed(&mut self) {
        if let Some(f) = self.cstate.fill.as_mut() {
            f.tee.streamed();
        }
    }
}
