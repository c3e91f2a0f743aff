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
use bytes::{Buf, BytesMut};

use crate::wire::backend::put_ready_for_query;
use crate::wire::frame::{cstr, put_frame, FrameHead};
use crate::wire::{tag, PgError, SqlState};

/// Which member of the cluster a request runs on.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_statements_parse() {
        assert!(matches!(
            proxy_statement("SET pgweir.route = 'replica'"),
            Some(ProxyStatement::SetRoute(Some(Route::Replica)))
        ));
        assert!(matches!(
            proxy_statement("set pgweir.route to primary;"),
            Some(ProxyStatement::SetRoute(Some(Route::Primary)))
        ));
        assert!(matches!(proxy_statement("SET pgweir.route = auto"), Some(ProxyStatement::SetRoute(None))));
        assert!(matches!(proxy_statement("SET pgweir.route = sideways"), Some(ProxyStatement::Invalid)));
        assert!(matches!(
            proxy_statement("SET pgweir.min_lsn = '0/16B3748'"),
            Some(ProxyStatement::SetMinLsn(Some(0x16B3748)))
        ));
        assert!(matches!(proxy_statement("SHOW pgweir.lsn"), Some(ProxyStatement::Show("pgweir.lsn"))));
        assert!(matches!(
            proxy_statement("SET pgweir.shard_key = 'AbC'"),
            Some(ProxyStatement::SetShardKey(Some(k))) if k == "AbC"
        ));
        assert!(matches!(proxy_statement("RESET pgweir.shard_key"), Some(ProxyStatement::SetShardKey(None))));
        assert!(matches!(proxy_statement("set pgweir.shard_key to default"), Some(ProxyStatement::SetShardKey(None))));
        assert!(proxy_statement("SET search_path = a").is_none());
        assert!(proxy_statement("SHOW search_path").is_none());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    Primary,
    Replica(usize),
    /// A read with no usable replica under primary_reads = never.
    Nowhere,
}

impl Session<'_> {
    /// Is the request at the front of the client's buffer (every message up to its Sync or
    /// Query) made only of reads that may run on a replica? Incomplete requests are not.
    fn request_is_read(&self) -> bool {
        let buf = &self.client.rbuf;
        let mut at = 0;
        let mut saw_statement = false;
        loop {
            let Ok(Some(h)) = FrameHead::parse(&buf[at..], usize::MAX) else { return false };
            if buf.len() < at + h.total {
                return false;
            }
            let body = &buf[at + 5..at + h.total];
            let read = match h.tag {
                tag::QUERY => {
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    return !saw_statement && is_read(self.ctx, &crate::wire::text(text));
                }
                tag::PARSE => match cstr(body).and_then(|(_, rest)| cstr(rest)) {
                    Some((q, _)) => is_read(self.ctx, &crate::wire::text(q)),
                    None => false,
                },
                tag::BIND => match super::stmts::parse_bind_names(body) {
                    Some((_, "", _)) => saw_statement || self.proto.unnamed_read,
                    Some((_, name, _)) => self.proto.stmts.get(name).is_some_and(|d| d.read),
                    None => false,
                },
                tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => true,
                tag::SYNC => return saw_statement,
                _ => false,
            };
            if !read {
                return false;
            }
            saw_statement |= matches!(h.tag, tag::PARSE | tag::BIND);
            at += h.total;
        }
    }

    /// Where the next request runs, and whether it may write (for read-your-writes).
    pub(super) fn choose_member(&self) -> (Member, bool) {
        let Some(top) = self.login.topology.as_ref() else { return (Member::Primary, false) };
        if self.login.mode != PoolMode::Transaction {
            return (Member::Primary, true);
        }
        let read = self.request_is_read();
        // On the primary, anything not known to be a read counts as a write (and what the
        // client sends later while attached is checked as it is forwarded).
        if self.route_override == Some(Route::Primary) || (self.route_override != Some(Route::Replica) && !read) {
            return (Member::Primary, !read);
        }
        let member = match top.pick_read(self.min_lsn) {
            Target::Replica(i) => Member::Replica(i),
            // primary_reads = never with no usable replica: the read is refused (see acquire).
            Target::Nowhere => Member::Nowhere,
            Target::Primary => Member::Primary,
        };
        (member, false)
    }

    /// The pool of the current primary (another member's after a failover).
    pub(super) fn write_pool(&self) -> std::sync::Arc<crate::pool::ServerPool> {
        match self.login.topology.as_ref().and_then(|t| t.promoted_replica()) {
            Some(i) if i < self.login.replicas.len() => self.login.replicas[i].clone(),
            _ => self.login.pool.clone(),
        }
    }

    /// After a write could not get a primary connection: waits (up to the failover timeout) for
    /// the monitor to find a promoted member. True if the primary changed and it is worth
    /// trying again.
    pub(super) async fn wait_for_failover(&self, since: usize) -> bool {
        let Some(top) = self.login.topology.as_ref() else { return false };
        let deadline = tokio::time::Instant::now() + self.ctx.config.routing.failover_timeout;
        loop {
            if top.primary_member.load(Ordering::Relaxed) != since {
                return true;
            }
            let notified = top.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if top.primary_member.load(Ordering::Relaxed) != since {
                return true;
            }
            let step = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
            if tokio::time::timeout_at(step.min(deadline), notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return false;
            }
        }
    }

    /// Marks replica `i` unusable until the monitor sees it answer again.
    pub(super) fn ban_replica(&self, i: usize, why: &str) {
        if let Some(top) = self.login.topology.as_ref() {
            let ban = top.ban(i);
            self.ctx.metrics.proxy.replica_bans.inc();
            tracing::warn!(cluster = %top.cluster, replica = i, error = why, ?ban, "replica failed; reads go elsewhere");
        }
    }

    /// Counts a request in (or out of) a member's outstanding load.
    pub(super) fn count_outstanding(&self, member: Member, delta: isize) {
        let Some(top) = self.login.topology.as_ref() else { return };
        let counter = match member {
            Member::Primary => &top.primary_outstanding,
            Member::Replica(i) => &top.replicas[i].outstanding,
            Member::Nowhere => return,
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

impl Session<'_> {
    /// With `routing.defer_begin`: a plain BEGIN (simple Query) is answered here and sent
    /// later, in front of the transaction's first statement, to the member that statement
    /// chooses; COMMIT or ROLLBACK of a transaction that never ran anything is answered here
    /// too. Returns true if it answered.
    pub(super) fn defer_begin(&mut self) -> bool {
        // A sharded database always defers: the first statement picks the shard.
        let sharded = self.login.shards.is_some();
        if !sharded
            && (!self.ctx.config.routing.defer_begin
                || self.login.topology.is_none()
                || self.login.mode != PoolMode::Transaction)
        {
            return false;
        }
        let buf = &self.client.rbuf;
        let Ok(Some(h)) = FrameHead::parse(buf, usize::MAX) else { return false };
        if h.tag != tag::QUERY || buf.len() < h.total || h.total > 1024 {
            return false;
        }
        // Only transaction control is answered here: look at the first word before anything else.
        let Ok(text) = std::str::from_utf8(&buf[5..h.total - 1]) else { return false };
        let control = crate::route::lexer::first_word(text).is_some_and(|w| {
            ["begin", "start", "commit", "end", "rollback", "abort"].iter().any(|k| w.eq_ignore_ascii_case(k))
        });
        if !control {
            return false;
        }
        let text = text.to_string();
        let c = {
            let mut cache = self.ctx.classifier.lock().unwrap_or_else(|p| p.into_inner());
            cache.classify(&text, &self.ctx.config.routing.write_functions)
        };
        let (tag_text, status) = match (&c.txn, self.deferred_begin.is_some()) {
            (Some(TxnControl::Begin { read_only, serializable, .. }), false)
                if (sharded || !(*read_only || *serializable))
                    && crate::route::lexer::split_statements(&text).len() == 1 =>
            {
                self.deferred_begin = Some(text);
                ("BEGIN", b'T')
            }
            (Some(TxnControl::Commit), true) => {
                self.deferred_begin = None;
                ("COMMIT", b'I')
            }
            (Some(TxnControl::Rollback), true) => {
                self.deferred_begin = None;
                ("ROLLBACK", b'I')
            }
            _ => return false,
        };
        self.client.rbuf.advance(h.total);
        let mut body = tag_text.as_bytes().to_vec();
        body.push(0);
        put_frame(&mut self.client.wbuf, b'C', &body);
        put_ready_for_query(&mut self.client.wbuf, status);
        true
    }

    /// A deferred BEGIN that a replica would refuse (SERIALIZABLE: only sharded databases defer
    /// those) sends its transaction to the primary; so does any deferred BEGIN of a sharded
    /// database when `routing.defer_begin` is off (its reads stay off replicas, as asked).
    pub(super) fn deferred_begin_needs_primary(&self) -> bool {
        let Some(text) = self.deferred_begin.as_deref() else { return false };
        if self.login.shards.is_some() && !self.ctx.config.routing.defer_begin {
            return true;
        }
        let c = {
            let mut cache = self.ctx.classifier.lock().unwrap_or_else(|p| p.into_inner());
            cache.classify(text, &self.ctx.config.routing.write_functions)
        };
        matches!(c.txn, Some(TxnControl::Begin { serializable: true, .. }))
    }

    /// Sends a deferred BEGIN ahead of the transaction's first request (its answers are
    /// swallowed: the client had them already).
    pub(super) fn send_deferred_begin(&mut self) {
        let Some(begin) = self.deferred_begin.take() else { return };
        let Some(server) = self.server.as_mut() else { return };
        let server: &mut crate::server::ServerConn = server;
        crate::wire::backend::put_query(&mut self.proto.to_server, &begin);
        self.proto.plan.injected(crate::session::plan::Unit::Query(None));
        let mut side =
            crate::session::state::ServerSide { applied: &mut server.applied, prepared: &mut server.prepared };
        let begin = [crate::route::session_sql::Effect::Begin];
        self.proto.state.completed(&begin, "BEGIN", &mut self.params, &mut self.proto.stmts, &mut side);
    }

    /// Answers the proxy's own settings without a server: `SET pgweir.route = primary | replica
    /// | auto`, `SET pgweir.min_lsn = 'X/Y'` (read-your-writes across an application's own
    /// connections) and `SHOW pgweir.lsn` / `SHOW pgweir.route`. Returns true if it answered.
    pub(super) fn answer_proxy_statement(&mut self) -> bool {
        let buf = &self.client.rbuf;
        let Ok(Some(h)) = FrameHead::parse(buf, usize::MAX) else { return false };
        if h.tag != tag::QUERY || buf.len() < h.total || h.total > 512 {
            return false;
        }
        // Cheap test first: only SET/SHOW of a pgweir.* name can be ours (the shape's facts
        // are kept for the rest of the session's look at this message).
        let body = &buf[5..h.total - 1];
        let plain = match self.proto.shapes.facts(&crate::wire::text(body)) {
            Some(f) => f.no_pgweir,
            None => !memchr_ci(body, b"pgweir."),
        };
        if plain {
            return false;
        }
        let text = String::from_utf8_lossy(body).to_string();
        let Some(answer) = proxy_statement(&text) else { return false };
        self.client.rbuf.advance(h.total);
        let out = &mut self.client.wbuf;
        match answer {
            ProxyStatement::SetRoute(r) => {
                self.route_override = r;
                put_frame(out, b'C', b"SET\0");
            }
            ProxyStatement::SetMinLsn(Some(lsn)) => {
                self.min_lsn = self.min_lsn.max(lsn);
                put_frame(out, b'C', b"SET\0");
            }
            ProxyStatement::SetShardKey(key) => match self.login.shards.as_mut() {
                Some(s) => {
                    s.session_key = key;
                    put_frame(out, b'C', b"SET\0");
                }
                None => PgError::error(SqlState("22023"), "pgweir: pgweir.shard_key applies only to sharded databases")
                    .encode(out),
            },
            ProxyStatement::SetMinLsn(None) | ProxyStatement::Invalid => {
                PgError::error(
                    SqlState("22023"),
                    "pgweir: invalid value (route: primary, replica or auto; min_lsn: 'X/Y')",
                )
                .encode(out);
            }
            ProxyStatement::Show(name) => {
                let value = match name {
                    "pgweir.lsn" => format_lsn(if self.min_lsn == u64::MAX { 0 } else { self.min_lsn }),
                    "pgweir.shard_key" => {
                        self.login.shards.as_ref().and_then(|s| s.session_key.clone()).unwrap_or_default()
                    }
                    _ => match self.route_override {
                        Some(Route::Primary) => "primary".into(),
                        Some(Route::Replica) => "replica".into(),
                        None => "auto".into(),
                    },
                };
                put_row_description(out, name);
                let mut row = Vec::new();
                row.extend_from_slice(&1i16.to_be_bytes());
                row.extend_from_slice(&(value.len() as i32).to_be_bytes());
                row.extend_from_slice(value.as_bytes());
                put_frame(out, b'D', &row);
                put_frame(out, b'C', b"SHOW\0");
            }
        }
        let status = if self.deferred_begin.is_some() { b'T' } else { b'I' };
        put_ready_for_query(out, status);
        true
    }
}

/// A Query body that sets or shows one of the proxy's own settings.
pub fn mentions_pgweir_setting(body: &[u8]) -> bool {
    memchr_ci(body, b"pgweir.")
        && proxy_statement(&crate::wire::text(body.strip_suffix(&[0]).unwrap_or(body))).is_some()
}

use crate::route::lexer::contains_ci as memchr_ci;

enum ProxyStatement {
    SetRoute(Option<Route>),
    SetMinLsn(Option<u64>),
    /// `SET pgweir.shard_key = 'V'` (None: RESET, or DEFAULT).
    SetShardKey(Option<String>),
    Show(&'static str),
    Invalid,
}

fn proxy_statement(sql: &str) -> Option<ProxyStatement> {
    let sql = sql.trim().trim_end_matches(';').trim();
    let lower = sql.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("show ") {
        return match rest.trim() {
            "pgweir.lsn" => Some(ProxyStatement::Show("pgweir.lsn")),
            "pgweir.route" => Some(ProxyStatement::Show("pgweir.route")),
            "pgweir.shard_key" => Some(ProxyStatement::Show("pgweir.shard_key")),
            _ => None,
        };
    }
    if lower.strip_prefix("reset ").map(str::trim) == Some("pgweir.shard_key") {
        return Some(ProxyStatement::SetShardKey(None));
    }
    let rest = lower.strip_prefix("set ")?.trim_start();
    let (name, value) = if let Some((n, v)) = rest.split_once('=') {
        (n.trim(), v.trim())
    } else {
        let (n, v) = rest.split_once(char::is_whitespace)?;
        (n.trim(), v.trim().strip_prefix("to")?.trim())
    };
    // The value as written (the lowercased copy has the same byte offsets).
    let at = value.as_ptr() as usize - lower.as_ptr() as usize;
    let original = &sql[at..at + value.len()];
    let value = value.trim_matches('\'');
    match name {
        "pgweir.shard_key" => Some(ProxyStatement::SetShardKey(match original {
            "default" | "DEFAULT" => None,
            v => Some(v.trim_matches('\'').replace("''", "'")),
        })),
        "pgweir.route" => Some(match value {
            "primary" => ProxyStatement::SetRoute(Some(Route::Primary)),
            "replica" => ProxyStatement::SetRoute(Some(Route::Replica)),
            "auto" | "default" => ProxyStatement::SetRoute(None),
            _ => ProxyStatement::Invalid,
        }),
        "pgweir.min_lsn" => Some(ProxyStatement::SetMinLsn(parse_lsn(value))),
        _ => None,
    }
}

fn put_row_description(out: &mut BytesMut, name: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i32.to_be_bytes()); // table oid
    body.extend_from_slice(&0i16.to_be_bytes()); // column number
    body.extend_from_slice(&25i32.to_be_bytes()); // text
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    put_frame(out, b'T', &body);
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
