//! Read/write routing of one request in transaction mode: a read (by the classifier, or a
//! transaction that begins READ ONLY and is not SERIALIZABLE) goes to the least-loaded usable
//! replica that has replayed past this session's last write (read-your-writes); everything else
//! goes to the primary. After a write transaction the session records the primary's WAL insert
//! position, read on the same connection after the COMMIT completed.

use std::sync::atomic::Ordering;

use super::relay::Session;
use crate::config::PoolMode;
use crate::pool::topology::{format_lsn, parse_lsn, Target};
use crate::route::classify::{Route, TxnControl};
use crate::wire::frame::{cstr, FrameHead};
use crate::wire::tag;

/// Which member of the cluster a request runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    Primary,
    Replica(usize),
}

impl Session<'_> {
    /// Is the request at the front of the client's buffer a read that may run on a replica?
    fn request_is_read(&self) -> bool {
        let buf = &self.client.rbuf;
        let Ok(Some(h)) = FrameHead::parse(buf, usize::MAX) else { return false };
        if buf.len() < h.total {
            return false;
        }
        let body = &buf[5..h.total];
        let text = match h.tag {
            tag::QUERY => body.strip_suffix(&[0]).unwrap_or(body),
            tag::PARSE => match cstr(body).and_then(|(_, rest)| cstr(rest)) {
                Some((q, _)) => q,
                None => return false,
            },
            tag::BIND => {
                return match super::stmts::parse_bind_names(body) {
                    Some((_, "", _)) => self.proto.unnamed_read,
                    Some((_, name, _)) => self.proto.stmts.get(name).is_some_and(|d| d.read),
                    None => false,
                }
            }
            _ => return false,
        };
        let sql = String::from_utf8_lossy(text);
        is_read(self.ctx, &sql)
    }

    /// Where the next request runs, and whether it may write (for read-your-writes).
    pub(super) fn choose_member(&self) -> (Member, bool) {
        let Some(top) = self.login.topology.as_ref() else { return (Member::Primary, false) };
        if self.login.mode != PoolMode::Transaction || !self.request_is_read() {
            return (Member::Primary, true);
        }
        let member = match top.pick_read(self.min_lsn) {
            Target::Replica(i) => Member::Replica(i),
            // primary_reads = never with no usable replica: the primary still answers rather
            // than failing the read (logged); the lag monitor will bring replicas back.
            Target::Nowhere => {
                tracing::debug!(cluster = %top.cluster, "no usable replica for a read; using the primary");
                Member::Primary
            }
            Target::Primary => Member::Primary,
        };
        (member, false)
    }

    /// Counts a request in (or out of) a member's outstanding load.
    pub(super) fn count_outstanding(&self, member: Member, delta: isize) {
        let Some(top) = self.login.topology.as_ref() else { return };
        let counter = match member {
            Member::Primary => &top.primary_outstanding,
            Member::Replica(i) => &top.replicas[i].outstanding,
        };
        if delta > 0 {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// After a write on the primary: remember where the primary's WAL was once it completed.
    pub(super) async fn record_write_position(&mut self) {
        if !self.ctx.config.routing.read_your_writes || self.login.topology.is_none() {
            return;
        }
        let Some(server) = self.server.as_mut() else { return };
        match server.query_text("select pg_current_wal_insert_lsn()::text").await {
            Ok(Some(text)) => {
                if let Some(lsn) = parse_lsn(&text) {
                    if lsn > self.min_lsn {
                        self.min_lsn = lsn;
                        tracing::trace!(lsn = %format_lsn(lsn), "read-your-writes position");
                    }
                }
            }
            // Without a position, send this session's reads to the primary from now on.
            _ => self.min_lsn = u64::MAX,
        }
    }
}

/// True when `sql` is a read by the classifier (hints included), or a transaction that begins
/// READ ONLY and is not SERIALIZABLE (standbys refuse those).
pub fn is_read(ctx: &super::Context, sql: &str) -> bool {
    let c = {
        let mut cache = ctx.classifier.lock().unwrap_or_else(|p| p.into_inner());
        cache.classify(sql, &ctx.config.routing.write_functions)
    };
    match c.txn {
        Some(TxnControl::Begin { read_only, serializable, .. }) => read_only && !serializable,
        Some(_) => false,
        None => c.route == Route::Replica,
    }
}
