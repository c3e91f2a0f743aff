//! `COPY sharded_table FROM STDIN` split by key. Every shard gets the COPY (in a transaction);
//! the client gets one CopyInResponse; its CopyData stream is cut into rows (`shard::copy`),
//! each sent on to its key's shard in CopyData chunks; at CopyDone every shard finishes, and
//! all commit only if all succeeded (the client sees `COPY n` with the total), else all roll
//! back and the client sees the first error. Memory per session stays at one chunk per shard.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::relay::Session;
use super::sharded::ShardStep;
use crate::pool::{discard, Pooled};
use crate::shard::copy::{CopyPlan, Rows};
use crate::wire::backend::{put_query, put_ready_for_query};
use crate::wire::frame::{put_frame, FrameHead};
use crate::wire::{tag, PgError, SqlState};

/// Rows for one shard are sent once this much is waiting.
const CHUNK: usize = 64 * 1024;

fn lost(e: impl std::fmt::Display) -> PgError {
    PgError::error(SqlState::CONNECTION_FAILURE, format!("pgweir: a shard's connection failed during COPY: {e}"))
}

impl Session<'_> {
    pub(super) async fn copy_split(&mut self, plan: CopyPlan, sql: &str) -> ShardStep {
        if self.deferred_begin.is_some() {
            self.refuse_request(PgError::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "pgweir: COPY into a sharded table inside a transaction would write to every shard: run it outside one",
            ));
            return ShardStep::Done;
        }
        // A simple Query, or [Parse] Bind [Describe] Execute Sync (the Sync is ignored in COPY
        // mode, as PostgreSQL does; the client's Sync after CopyDone gets the ReadyForQuery).
        let mut extended = None;
        let mut at = 0;
        while let Ok(Some(h)) = FrameHead::parse(&self.client.rbuf[at..], usize::MAX) {
            at += h.total;
            match h.tag {
                tag::QUERY => break,
                tag::PARSE => extended = Some(true),
                tag::BIND | tag::DESCRIBE | tag::EXECUTE => {
                    extended.get_or_insert(false);
                }
                _ => break,
            }
        }
        self.client.rbuf.advance(at.min(self.client.rbuf.len()));
        let Some(layout) = self.login.shards.as_ref().map(|s| s.layout.clone()) else { return ShardStep::Done };
        let targets: Vec<usize> = (0..layout.shards).collect();
        let mut legs = match self.legs(&targets, false).await {
            Ok(l) => l,
            Err(e) => {
                e.encode(&mut self.client.wbuf);
                put_ready_for_query(&mut self.client.wbuf, b'I');
                return ShardStep::Done;
            }
        };
        let outcome = self.run_copy(&mut legs, &plan, &layout, sql, extended).await;
        if outcome.is_err() {
            // Possibly mid-COPY or mid-transaction: never back to the pool.
            for leg in legs {
                discard(leg);
            }
        }
        if outcome.is_ok() {
            for t in targets {
                self.invalidate_written(t, sql).await;
            }
        }
        match outcome {
            Ok(tagline) => put_frame(&mut self.client.wbuf, b'C', tagline.as_bytes()),
            Err(Some(e)) => put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, &e),
            Err(None) => return ShardStep::Gone,
        }
        put_ready_for_query(&mut self.client.wbuf, b'I');
        ShardStep::Done
    }

    /// Ok: the CommandComplete text. Err(Some): an ErrorResponse body for the client (the legs
    /// are not reusable). Err(None): the client went away.
    async fn run_copy(
        &mut self,
        legs: &mut [Pooled],
        plan: &CopyPlan,
        layout: &crate::shard::Layout,
        sql: &str,
        extended: Option<bool>,
    ) -> Result<String, Option<BytesMut>> {
        let as_error = |e: PgError| {
            let mut b = BytesMut::new();
            e.encode(&mut b);
            Some(b.split_off(5))
        };
        for leg in legs.iter_mut() {
            let mut out = BytesMut::new();
            put_query(&mut out, "BEGIN");
            match extended {
                None => put_query(&mut out, sql),
                Some(_) => {
                    put_frame(&mut out, tag::PARSE, format!("\0{sql}\0\0\0").as_bytes());
                    put_frame(&mut out, tag::BIND, &[0, 0, 0, 0, 0, 0, 0, 0]);
                    put_frame(&mut out, tag::EXECUTE, &[0, 0, 0, 0, 0]);
                }
            }
            leg.stream.write_all(&out).await.map_err(|e| as_error(lost(e)))?;
        }
        let mut copy_in = None;
        for leg in legs.iter_mut() {
            // BEGIN's CommandComplete and ReadyForQuery, then CopyInResponse (or an error).
            loop {
                let (t, body) = leg.read_frame().await.map_err(|e| as_error(lost(e)))?;
                match t {
                    tag::COPY_IN_RESPONSE => {
                        copy_in.get_or_insert(body);
                        break;
                    }
                    tag::ERROR_RESPONSE => return Err(Some(body)),
                    _ => {}
                }
            }
        }
        let copy_in = copy_in.unwrap_or_default();
        if let Some(parse) = extended {
            if parse {
                put_frame(&mut self.client.wbuf, b'1', &[]);
            }
            put_frame(&mut self.client.wbuf, b'2', &[]);
        }
        put_frame(&mut self.client.wbuf, tag::COPY_IN_RESPONSE, &copy_in);
        self.client.flush().await.map_err(|_| None)?;

        let mut rows = Rows::default();
        let mut pending: Vec<BytesMut> = legs.iter().map(|_| BytesMut::new()).collect();
        let mut first_row = plan.header;
        let mut failure: Option<PgError> = None;
        let mut client_failed = None;
        let max = self.ctx.config.max_message_size;
        loop {
            let h = match FrameHead::parse(&self.client.rbuf, max) {
                Ok(Some(h)) if self.client.rbuf.len() >= h.total => h,
                Ok(_) => {
                    if self.client.stream.read_buf(&mut self.client.rbuf).await.map_err(|_| None)? == 0 {
                        return Err(None);
                    }
                    continue;
                }
                Err(e) => return Err(as_error(super::proto::protocol(e))),
            };
            let frame = self.client.rbuf.split_to(h.total);
            match h.tag {
                tag::COPY_DATA if failure.is_none() => {
                    let mut route = |row: &[u8]| {
                        if first_row {
                            first_row = false;
                            for p in pending.iter_mut() {
                                p.extend_from_slice(row);
                            }
                            return;
                        }
                        match plan
                            .key(layout, row)
                            .and_then(|k| layout.tables[plan.table].shard_of(k.as_ref(), layout.shards))
                        {
                            Ok(s) => pending[s].extend_from_slice(row),
                            Err(e) => {
                                failure.get_or_insert(PgError::error(SqlState("22P02"), format!("pgweir: COPY: {e}")));
                            }
                        }
                    };
                    rows.feed(plan, &frame[5..], &mut route);
                    for (leg, p) in legs.iter_mut().zip(pending.iter_mut()) {
                        if p.len() >= CHUNK {
                            send_rows(leg, p).await.map_err(|e| as_error(lost(e)))?;
                        }
                    }
                }
                tag::COPY_DATA | tag::FLUSH | tag::SYNC => {}
                tag::COPY_DONE => break,
                tag::COPY_FAIL => {
                    let msg =
                        String::from_utf8_lossy(frame[5..].strip_suffix(&[0]).unwrap_or(&frame[5..])).into_owned();
                    client_failed = Some(msg);
                    break;
                }
                _ => {
                    return Err(as_error(PgError::error(
                        SqlState::PROTOCOL_VIOLATION,
                        "pgweir: unexpected message during COPY",
                    )))
                }
            }
        }
        if extended.is_some() {
            // The Sync that follows CopyDone (or CopyFail) gets the ReadyForQuery.
            loop {
                match FrameHead::parse(&self.client.rbuf, max) {
                    Ok(Some(h)) if self.client.rbuf.len() >= h.total => {
                        if matches!(h.tag, tag::SYNC | tag::FLUSH) {
                            self.client.rbuf.advance(h.total);
                        }
                        if h.tag != tag::FLUSH {
                            break;
                        }
                    }
                    Ok(_) => {
                        if self.client.stream.read_buf(&mut self.client.rbuf).await.map_err(|_| None)? == 0 {
                            return Err(None);
                        }
                    }
                    Err(e) => return Err(as_error(super::proto::protocol(e))),
                }
            }
        }
        if let Some(last) = rows.finish() {
            if let Ok(s) =
                plan.key(layout, &last).and_then(|k| layout.tables[plan.table].shard_of(k.as_ref(), layout.shards))
            {
                pending[s].extend_from_slice(&last);
            } else if failure.is_none() {
                failure = Some(PgError::error(SqlState("22P02"), "pgweir: COPY: the last row's key is not valid"));
            }
        }
        let abort = failure.as_ref().map(|e| e.message.clone()).or(client_failed);
        for (leg, p) in legs.iter_mut().zip(pending.iter_mut()) {
            let mut out = BytesMut::new();
            match &abort {
                None => {
                    if !p.is_empty() {
                        put_frame(&mut out, tag::COPY_DATA, p);
                    }
                    put_frame(&mut out, tag::COPY_DONE, &[]);
                }
                Some(m) => put_frame(&mut out, tag::COPY_FAIL, format!("{m}\0").as_bytes()),
            }
            if extended.is_some() {
                put_frame(&mut out, tag::SYNC, &[]);
            }
            leg.stream.write_all(&out).await.map_err(|e| as_error(lost(e)))?;
        }
        let mut total = 0u64;
        let mut error = None;
        for leg in legs.iter_mut() {
            loop {
                let (t, body) = leg.read_frame().await.map_err(|e| as_error(lost(e)))?;
                match t {
                    b'C' => {
                        let text = String::from_utf8_lossy(&body);
                        total +=
                            text.trim_end_matches('\0').rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    }
                    tag::ERROR_RESPONSE => {
                        error.get_or_insert(body);
                    }
                    tag::READY_FOR_QUERY => break,
                    _ => {}
                }
            }
        }
        let end = if error.is_some() || abort.is_some() { "ROLLBACK" } else { "COMMIT" };
        let mut commit_error = None;
        for leg in legs.iter_mut() {
            match leg.run_control(end).await {
                Ok(None) => {}
                Ok(Some(f)) => commit_error = commit_error.or(Some(f.to_string())),
                Err(e) => return Err(as_error(lost(e))),
            }
        }
        if let Some(e) = failure {
            return Err(as_error(e));
        }
        if let Some(e) = error {
            return Err(Some(e));
        }
        if let Some(e) = commit_error {
            return Err(as_error(PgError::error(
                SqlState("40000"),
                format!("pgweir: COPY: a shard's COMMIT failed: {e}"),
            )));
        }
        Ok(format!("COPY {total}\0"))
    }
}

async fn send_rows(leg: &mut Pooled, rows: &mut BytesMut) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(rows.len() + 5);
    put_frame(&mut out, tag::COPY_DATA, rows);
    rows.clear();
    leg.stream.write_all(&out).await
}
