//! Requests that run on several shards at once, outside a transaction block. A scatter read
//! is sent to every shard in parallel and merged as `shard::merge` plans: concatenated as it
//! streams (LIMIT/OFFSET after the merge), or finished by a final query on one of the shards'
//! servers over the partial rows. A split write (a multi-row INSERT whose rows belong to
//! several shards, or a keyed UPDATE/DELETE over several shards) runs in a transaction on each
//! shard, and all commit only when every part succeeded; a failure rolls every part back.
//! The client sees one result, shaped as its request asked (simple Query, or Parse/Bind/
//! Describe/Execute/Sync).

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::proto::{HIGH_WATER, MAX_SERVER_FRAME};
use super::relay::Session;
use super::sharded::ShardStep;
use crate::cache::request::{self, Shape};
use crate::pool::{discard, Pooled};
use crate::shard::merge::{self, Plan};
use crate::wire::backend::put_ready_for_query;
use crate::wire::frame::{cstr, put_frame};
use crate::wire::{tag, PgError, SqlState};

/// The request as the shards will get it.
pub(super) struct Req {
    pub shape: Shape,
    types: Vec<u8>,
    /// The Bind's parameter formats and values (without its result formats).
    params: Vec<u8>,
    /// The Bind's result formats section (count + codes).
    results: Vec<u8>,
    len: usize,
    /// The Execute's row limit.
    pub cap: RowCap,
}

/// An Execute's row limit, emulated over a merged result: rows past it are dropped and the
/// result ends with PortalSuspended instead of CommandComplete (the Sync that follows closes
/// the portal, as the client expects).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RowCap {
    max: Option<u64>,
    sent: u64,
    more: bool,
}

impl RowCap {
    /// May another row go to the client?
    pub fn admit(&mut self) -> bool {
        if self.max.is_some_and(|m| self.sent >= m) {
            self.more = true;
            return false;
        }
        self.sent += 1;
        true
    }

    /// The end of the result: PortalSuspended when rows were held back, else `SELECT n`.
    pub fn end(&self, out: &mut BytesMut) {
        if self.more {
            put_frame(out, b's', &[]);
        } else {
            put_frame(out, b'C', format!("SELECT {}\0", self.sent).as_bytes());
        }
    }
}

pub(super) fn lost(e: impl std::fmt::Display) -> PgError {
    PgError::error(SqlState::CONNECTION_FAILURE, format!("pgweir: a shard's connection failed: {e}"))
}

/// Splits a Bind body (after its names) into parameters and result formats.
fn bind_parts(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let u16_at =
        |at: usize| -> Option<usize> { Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize) };
    let mut at = 2 + 2 * u16_at(0)?;
    let n = u16_at(at)?;
    at += 2;
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4 + len.max(0) as usize;
    }
    (at <= b.len()).then(|| b.split_at(at))
}

/// Writes the answers a request's shape expects before its rows.
pub(super) fn put_preamble(out: &mut BytesMut, shape: Shape, description: Option<&[u8]>) {
    if let Shape::Extended { parse, describe } = shape {
        if parse {
            put_frame(out, b'1', &[]);
        }
        put_frame(out, b'2', &[]);
        if !describe {
            return;
        }
    }
    match description {
        Some(d) => put_frame(out, b'T', d),
        // A simple Query whose statement returns no rows sends no description.
        None if shape != Shape::Simple => put_frame(out, b'n', &[]),
        None => {}
    }
}

/// A RowDescription's column names, type OIDs and formats.
pub(super) fn describe(body: &[u8]) -> Option<Described> {
    let n = u16::from_be_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let mut rest = &body[2..];
    let mut d = Described::default();
    for _ in 0..n {
        let (name, r) = cstr(rest)?;
        d.names.push(String::from_utf8_lossy(name).into_owned());
        d.types.push(u32::from_be_bytes(r.get(6..10)?.try_into().ok()?));
        d.formats.push(i16::from_be_bytes(r.get(16..18)?.try_into().ok()?));
        rest = r.get(18..)?;
    }
    Some(d)
}

/// A RowDescription's columns.
#[derive(Clone, Debug, Default)]
pub(super) struct Described {
    pub names: Vec<String>,
    pub types: Vec<u32>,
    pub formats: Vec<i16>,
}

impl Session<'_> {
    fn idle_status(&self) -> u8 {
        if self.deferred_begin.is_some() {
            b'T'
        } else {
            b'I'
        }
    }

    /// The request at the front of the buffer in the one shape a scatter can run.
    fn scatter_request(&self) -> Result<Req, PgError> {
        let refuse = |m: &str| PgError::error(SqlState::FEATURE_NOT_SUPPORTED, format!("pgweir: {m}"));
        let (req, max_rows) = match request::parse_with_limit(&self.client.rbuf) {
            Ok(r) => r,
            Err(request::NotCacheable::RowLimit) => return Err(refuse("Execute with a row limit cannot span shards")),
            Err(request::NotCacheable::Shape) => {
                return Err(refuse("a request spanning shards must be one Query, or Parse/Bind/Describe/Execute/Sync"))
            }
        };
        let types = match (req.text, self.proto.stmts.get(req.statement)) {
            (Some(_), _) => req.types.to_vec(),
            (None, Some(def)) => {
                super::stmts::parse_parse(&def.parse_frame[5..]).map(|p| p.types.to_vec()).unwrap_or_default()
            }
            (None, None) => Vec::new(),
        };
        let (params, results) = match req.shape {
            Shape::Simple => (&[0u8, 0, 0, 0][..], &[0u8, 0][..]),
            _ => bind_parts(req.bind).ok_or_else(|| refuse("malformed Bind"))?,
        };
        let cap = RowCap { max: (max_rows > 0).then_some(max_rows as u64), sent: 0, more: false };
        Ok(Req { shape: req.shape, types, params: params.to_vec(), results: results.to_vec(), len: req.len, cap })
    }

    /// Servers on `targets`, with the session's settings applied; `read`: a replica of each
    /// target when one is usable (lag and this session's writes to that cluster allowing).
    pub(super) async fn legs(&mut self, targets: &[usize], read: bool) -> Result<Vec<Pooled>, PgError> {
        let Some(shards) = self.login.shards.as_ref() else { return Ok(Vec::new()) };
        let pools: Vec<std::sync::Arc<crate::pool::ServerPool>> = targets
            .iter()
            .map(|&t| {
                let p = &shards.targets[t];
                let lsn = if t == shards.current { self.min_lsn } else { shards.lsns[t] };
                use crate::pool::topology::Target;
                match p.topology.as_ref().filter(|_| read).map(|top| top.pick_read(lsn)) {
                    Some(Target::Replica(i)) if i < p.replicas.len() => Ok(p.replicas[i].clone()),
                    Some(Target::Nowhere) => Err(PgError::error(
                        SqlState::CONNECTION_EXCEPTION,
                        "pgweir: no replica of a shard can serve this read now, and routing.primary_reads = never",
                    )),
                    _ => Ok(p.pool.clone()),
                }
            })
            .collect::<Result<_, _>>()?;
        // One at a time, in target order: two sessions each holding one shard's last server
        // while waiting for the other's can never happen (every session waits in one order).
        let mut legs = Vec::with_capacity(pools.len());
        for p in &pools {
            let leg = p.checkout().await.map_err(|e| e.to_pg())?;
            leg.link(self.cancel.pid);
            legs.push(leg);
        }
        for server in legs.iter_mut() {
            match super::params::sync(&self.params, server).await {
                Ok(None) => {}
                Ok(Some(err)) => {
                    return Err(PgError::error(
                        SqlState::CONNECTION_EXCEPTION,
                        format!("pgweir: could not apply this session's settings on a shard: {err}"),
                    ))
                }
                Err(e) => return Err(lost(e)),
            }
        }
        Ok(legs)
    }

    /// Sends `sql` to a leg in the request's shape; `text_results`: ask for text columns.
    fn send(req: &Req, sql: &str, text_results: bool) -> BytesMut {
        let mut out = BytesMut::new();
        match req.shape {
            Shape::Simple => crate::wire::backend::put_query(&mut out, sql),
            Shape::Extended { .. } => {
                let mut parse = vec![0u8];
                parse.extend_from_slice(sql.as_bytes());
                parse.push(0);
                parse.extend_from_slice(if req.types.is_empty() { &[0, 0] } else { &req.types });
                put_frame(&mut out, tag::PARSE, &parse);
                let mut bind = vec![0u8, 0u8];
                bind.extend_from_slice(&req.params);
                bind.extend_from_slice(if text_results { &[0, 0] } else { &req.results });
                put_frame(&mut out, tag::BIND, &bind);
                put_frame(&mut out, tag::DESCRIBE, b"P\0");
                put_frame(&mut out, tag::EXECUTE, &[0, 0, 0, 0, 0]);
                put_frame(&mut out, tag::SYNC, &[]);
            }
        }
        out
    }

    /// A read on several shards, merged; the request is consumed.
    pub(super) async fn scatter(&mut self, targets: &[usize], text: &str) -> ShardStep {
        let req = match self.scatter_request() {
            Ok(r) => r,
            Err(e) => {
                self.refuse_request(e);
                return ShardStep::Done;
            }
        };
        let plan = match merge::plan(text) {
            Ok(p) => p,
            Err(e) => {
                self.refuse_request(e.to_pg());
                return ShardStep::Done;
            }
        };
        bytes::Buf::advance(&mut self.client.rbuf, req.len);
        if let Err(e) = self.run_scatter(targets, &req, plan).await {
            e.encode(&mut self.client.wbuf);
        }
        let status = self.idle_status();
        put_ready_for_query(&mut self.client.wbuf, status);
        ShardStep::Done
    }

    async fn run_scatter(&mut self, targets: &[usize], req: &Req, plan: Plan) -> Result<(), PgError> {
        let mut legs = self.legs(targets, self.route_override != Some(crate::route::classify::Route::Primary)).await?;
        // Partial rows for PostgreSQL to finish come as text; rows that may be merged as
        // they stream come in the client's formats.
        let (sql, text_results) = match &plan {
            Plan::Concat { shard_sql, .. } => (shard_sql.clone(), false),
            Plan::Final(f) => (f.shard_sql.clone(), !f.streams()),
        };
        for leg in legs.iter_mut() {
            let out = Self::send(req, &sql, text_results);
            if let Err(e) = leg.stream.write_all(&out).await {
                return Err(lost(e));
            }
        }
        let r = match plan {
            Plan::Concat { skip, take, .. } => self.concat(&mut legs, req, skip, take).await,
            Plan::Final(f) if f.streams() => self.merge_sorted(&mut legs, req, &f).await,
            Plan::Final(f) => self.finish(&mut legs, req, &f, None).await,
        };
        if r.is_err() {
            // A leg may still be mid-response: never return it to the pool.
            for leg in legs {
                if leg.status != b'I' || !leg.rbuf.is_empty() {
                    discard(leg);
                }
            }
        }
        r
    }

    /// Reads a leg to its ReadyForQuery, handing each frame to `f`.
    pub(super) async fn drain(leg: &mut Pooled, mut f: impl FnMut(u8, BytesMut)) -> Result<(), PgError> {
        loop {
            let (t, body) = leg.read_frame_upto(MAX_SERVER_FRAME).await.map_err(lost)?;
            if t == tag::READY_FOR_QUERY {
                leg.status = body.first().copied().unwrap_or(b'I');
                return Ok(());
            }
            if t == tag::PARAMETER_STATUS {
                leg.record_parameter(&body);
                continue;
            }
            f(t, body);
        }
    }

    async fn concat(&mut self, legs: &mut [Pooled], req: &Req, skip: u64, take: Option<u64>) -> Result<(), PgError> {
        let (mut seen, mut sent) = (0u64, 0u64);
        let mut cap = req.cap;
        let mut error: Option<BytesMut> = None;
        let mut started = false;
        for (i, leg) in legs.iter_mut().enumerate() {
            loop {
                let (t, body) = leg.read_frame_upto(MAX_SERVER_FRAME).await.map_err(lost)?;
                match t {
                    tag::READY_FOR_QUERY => {
                        leg.status = body.first().copied().unwrap_or(b'I');
                        break;
                    }
                    tag::PARAMETER_STATUS => leg.record_parameter(&body),
                    tag::ERROR_RESPONSE => {
                        error.get_or_insert(body);
                    }
                    b'T' | b'n' if i == 0 && error.is_none() => {
                        put_preamble(&mut self.client.wbuf, req.shape, (t == b'T').then_some(&body[..]));
                        started = true;
                    }
                    tag::DATA_ROW if error.is_none() && started => {
                        seen += 1;
                        if seen > skip && take.is_none_or(|t| sent < t) {
                            sent += 1;
                            if cap.admit() {
                                put_frame(&mut self.client.wbuf, tag::DATA_ROW, &body);
                            }
                        }
                        if self.client.wbuf.len() >= HIGH_WATER {
                            self.client.flush().await.map_err(lost)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        match error {
            Some(e) => put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, &e),
            None => cap.end(&mut self.client.wbuf),
        }
        Ok(())
    }

    /// Collects the shards' partial rows and has PostgreSQL finish them on the first leg.
    /// `pre`: the shards' columns, when their headers were read already (a merge that fell
    /// back to this).
    pub(super) async fn finish(
        &mut self,
        legs: &mut [Pooled],
        req: &Req,
        f: &merge::Final,
        pre: Option<Described>,
    ) -> Result<(), PgError> {
        let mut ncols = pre.as_ref().map_or(0, |d| d.types.len());
        let mut described = pre;
        let mut values = BytesMut::new();
        let mut rows = 0usize;
        let mut error: Option<BytesMut> = None;
        for leg in legs.iter_mut() {
            Self::drain(leg, |t, body| match t {
                tag::ERROR_RESPONSE => {
                    error.get_or_insert(body);
                }
                b'T' if described.is_none() => {
                    described = describe(&body);
                    ncols = described.as_ref().map_or(0, |d| d.types.len());
                }
                tag::DATA_ROW if error.is_none() => {
                    if (rows + 1) * ncols.max(1) > merge::MAX_FINAL_PARAMS {
                        // Counted, not kept: final_sql refuses this size with the reason.
                        rows += 1;
                        return;
                    }
                    values.extend_from_slice(&body[2.min(body.len())..]);
                    rows += 1;
                }
                _ => {}
            })
            .await?;
        }
        if let Some(e) = error {
            put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, &e);
            return Ok(());
        }
        let Described { names, types, formats } = described.unwrap_or_default();
        let sql = f.final_sql(&types, &names, rows).map_err(|e| e.to_pg())?;
        if rows == 0 {
            // One row of NULLs (the final query filters it out) keeps VALUES typed.
            for _ in 0..ncols {
                values.extend_from_slice(&(-1i32).to_be_bytes());
            }
        }
        let nparams = rows.max(1) * ncols;
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.push(0);
        parse.extend_from_slice(&(nparams as u16).to_be_bytes());
        for _ in 0..rows.max(1) {
            for ty in &types {
                parse.extend_from_slice(&ty.to_be_bytes());
            }
        }
        // Each value goes back in the format the shard sent it in.
        let mut bind = vec![0u8, 0u8];
        if formats.iter().all(|&f| f == 0) {
            bind.extend_from_slice(&0u16.to_be_bytes());
        } else {
            bind.extend_from_slice(&(nparams as u16).to_be_bytes());
            for _ in 0..rows.max(1) {
                for f in &formats {
                    bind.extend_from_slice(&f.to_be_bytes());
                }
            }
        }
        bind.extend_from_slice(&(nparams as u16).to_be_bytes());
        bind.extend_from_slice(&values);
        bind.extend_from_slice(if req.shape == Shape::Simple { &[0, 0] } else { &req.results });
        let mut out = BytesMut::new();
        put_frame(&mut out, tag::PARSE, &parse);
        put_frame(&mut out, tag::BIND, &bind);
        put_frame(&mut out, tag::DESCRIBE, b"P\0");
        put_frame(&mut out, tag::EXECUTE, &[0, 0, 0, 0, 0]);
        put_frame(&mut out, tag::SYNC, &[]);
        let leg = &mut legs[0];
        leg.stream.write_all(&out).await.map_err(lost)?;
        let mut frames = Vec::new();
        Self::drain(leg, |t, body| frames.push((t, body))).await?;
        if let Some((_, e)) = frames.iter().find(|(t, _)| *t == tag::ERROR_RESPONSE) {
            put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, e);
            return Ok(());
        }
        let mut cap = req.cap;
        for (t, body) in frames {
            match t {
                b'T' => put_preamble(&mut self.client.wbuf, req.shape, Some(&body)),
                tag::DATA_ROW if cap.admit() => put_frame(&mut self.client.wbuf, t, &body),
                b'C' => cap.end(&mut self.client.wbuf),
                _ => {}
            }
        }
        Ok(())
    }
}

/// `INSERT 0 3`, `UPDATE 2`, `DELETE 1`: the tag's words and its row count.
fn split_tag(tag: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(tag.strip_suffix(&[0]).unwrap_or(tag)).ok()?;
    let (head, n) = text.rsplit_once(' ')?;
    Some((head.to_string(), n.parse().ok()?))
}

impl Session<'_> {
    /// A write whose parts run on several shards; all commit, or none.
    pub(super) async fn split_write(&mut self, parts: Vec<(usize, String)>) -> ShardStep {
        if self.deferred_begin.is_some() {
            self.refuse_request(super::sharded::cross_shard_write());
            return ShardStep::Done;
        }
        let req = match self.scatter_request() {
            Ok(r) => r,
            Err(e) => {
                self.refuse_request(e);
                return ShardStep::Done;
            }
        };
        bytes::Buf::advance(&mut self.client.rbuf, req.len);
        let targets: Vec<usize> = parts.iter().map(|(t, _)| *t).collect();
        let result = match self.legs(&targets, false).await {
            Ok(mut legs) => {
                let r = self.run_split(&mut legs, &req, &parts).await;
                if r.is_err() {
                    for leg in legs {
                        if leg.status != b'I' {
                            discard(leg);
                        }
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            for (t, sql) in &parts {
                self.invalidate_written(*t, sql).await;
            }
        }
        match result {
            Ok(out) => self.client.wbuf.extend_from_slice(&out),
            Err(e) => e.encode(&mut self.client.wbuf),
        }
        put_ready_for_query(&mut self.client.wbuf, b'I');
        ShardStep::Done
    }

    /// After a write this session ran on `target` outside the relay: the result cache's
    /// versions of the tables it wrote are bumped before the client hears of the commit.
    pub(super) async fn invalidate_written(&self, target: usize, sql: &str) {
        let (Some(cache), Some(shards)) = (self.ctx.cache.as_ref(), self.login.shards.as_ref()) else { return };
        cache.invalidate(&shards.targets[target].cache_db, &crate::cache::writes(sql)).await;
    }

    /// Runs each part in a transaction on its leg; the client's answer, once all committed.
    async fn run_split(
        &mut self,
        legs: &mut [Pooled],
        req: &Req,
        parts: &[(usize, String)],
    ) -> Result<BytesMut, PgError> {
        for (leg, (_, sql)) in legs.iter_mut().zip(parts) {
            let mut out = BytesMut::new();
            crate::wire::backend::put_query(&mut out, "BEGIN");
            out.extend_from_slice(&Self::send(req, sql, false));
            leg.stream.write_all(&out).await.map_err(lost)?;
        }
        let mut answer = BytesMut::new();
        let mut error: Option<BytesMut> = None;
        let mut total: Option<(String, u64)> = None;
        let mut described: Option<Option<BytesMut>> = None;
        let mut rows = BytesMut::new();
        for leg in legs.iter_mut() {
            // BEGIN's answer, then the part's.
            for _ in 0..2 {
                Self::drain(leg, |t, body| match t {
                    tag::ERROR_RESPONSE => {
                        error.get_or_insert(body);
                    }
                    b'T' | b'n' if described.is_none() => described = Some((t == b'T').then_some(body)),
                    tag::DATA_ROW => put_frame(&mut rows, tag::DATA_ROW, &body),
                    b'C' => {
                        if let Some((head, n)) = split_tag(&body) {
                            let t = total.get_or_insert((head, 0));
                            t.1 += n;
                        }
                    }
                    _ => {}
                })
                .await?;
            }
        }
        let end = if error.is_some() { "ROLLBACK" } else { "COMMIT" };
        for leg in legs.iter_mut() {
            let mut out = BytesMut::new();
            crate::wire::backend::put_query(&mut out, end);
            leg.stream.write_all(&out).await.map_err(lost)?;
        }
        let mut commit_error: Option<BytesMut> = None;
        for leg in legs.iter_mut() {
            Self::drain(leg, |t, body| {
                if t == tag::ERROR_RESPONSE {
                    commit_error.get_or_insert(body);
                }
            })
            .await?;
        }
        if let Some(e) = error.or(commit_error) {
            let mut out = BytesMut::new();
            put_frame(&mut out, tag::ERROR_RESPONSE, &e);
            return Ok(out);
        }
        put_preamble(&mut answer, req.shape, described.flatten().as_deref());
        answer.extend_from_slice(&rows);
        let (head, n) = total.unwrap_or_else(|| ("INSERT 0".into(), 0));
        put_frame(&mut answer, b'C', format!("{head} {n}\0").as_bytes());
        Ok(answer)
    }
}
