//! The streaming k-way merge of an ORDER BY read over several shards: each shard sends its
//! rows already sorted (and at most LIMIT + OFFSET of them), the proxy holds one row per shard
//! and always passes on the smallest, so memory stays at one row per shard however large the
//! result. It applies when every sort key is a column whose order the proxy knows exactly
//! (`shard::order`); otherwise the rows go to PostgreSQL to finish (`Session::finish`).

use bytes::BytesMut;

use super::proto::HIGH_WATER;
use super::proto::MAX_SERVER_FRAME;
use super::relay::Session;
use super::scatter::{describe, lost, put_preamble, Req, RowCap};
use crate::pool::Pooled;
use crate::shard::merge::Final;
use crate::shard::order::{compare, SortKey};
use crate::wire::frame::put_frame;
use crate::wire::{tag, PgError};

/// A DataRow body's column values (None: NULL).
fn columns(body: &[u8]) -> Vec<Option<&[u8]>> {
    let n = body.get(0..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
    let mut out = Vec::with_capacity(n);
    let mut at = 2;
    for _ in 0..n {
        let Some(len) = body.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = (at + len as usize).min(body.len());
            out.push(Some(&body[at..end]));
            at = end;
        }
    }
    out
}

/// What the next frames of a leg held.
enum Next {
    Row(BytesMut),
    /// The leg's result ended (CommandComplete), or it failed (the error is kept).
    Done,
}

/// Reads a leg up to its next row or the end of its result.
async fn next_row(leg: &mut Pooled, error: &mut Option<BytesMut>) -> Result<Next, PgError> {
    loop {
        let (t, body) = leg.read_frame_upto(MAX_SERVER_FRAME).await.map_err(lost)?;
        match t {
            tag::DATA_ROW => return Ok(Next::Row(body)),
            b'C' | tag::READY_FOR_QUERY => {
                if t == tag::READY_FOR_QUERY {
                    leg.status = body.first().copied().unwrap_or(b'I');
                    // Put it back for the final drain.
                    let mut z = BytesMut::new();
                    put_frame(&mut z, tag::READY_FOR_QUERY, &body);
                    z.extend_from_slice(&leg.rbuf);
                    leg.rbuf = z;
                }
                return Ok(Next::Done);
            }
            tag::ERROR_RESPONSE => {
                error.get_or_insert(body);
            }
            tag::PARAMETER_STATUS => leg.record_parameter(&body),
            _ => {}
        }
    }
}

impl Session<'_> {
    pub(super) async fn merge_sorted(&mut self, legs: &mut [Pooled], req: &Req, f: &Final) -> Result<(), PgError> {
        // Each leg's answers up to its RowDescription.
        let mut description: Option<BytesMut> = None;
        let mut error: Option<BytesMut> = None;
        for leg in legs.iter_mut() {
            loop {
                let (t, body) = leg.read_frame_upto(MAX_SERVER_FRAME).await.map_err(lost)?;
                match t {
                    b'T' => {
                        description.get_or_insert(body);
                        break;
                    }
                    tag::ERROR_RESPONSE => {
                        error.get_or_insert(body);
                    }
                    tag::READY_FOR_QUERY => {
                        leg.status = body.first().copied().unwrap_or(b'I');
                        let mut z = BytesMut::new();
                        put_frame(&mut z, tag::READY_FOR_QUERY, &body);
                        leg.rbuf = {
                            z.extend_from_slice(&leg.rbuf);
                            z
                        };
                        break;
                    }
                    tag::PARAMETER_STATUS => leg.record_parameter(&body),
                    _ => {}
                }
            }
        }
        if let Some(e) = error {
            for leg in legs.iter_mut() {
                Self::drain(leg, |_, _| {}).await?;
            }
            put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, &e);
            return Ok(());
        }
        let Some(description) = description else {
            return Err(PgError::error(
                crate::wire::SqlState::INTERNAL_ERROR,
                "pgweir: a shard sent no row description",
            ));
        };
        let cols = describe(&description).unwrap_or_default();
        let Some(keys) = f.sort_keys(&cols.names, &cols.types, &cols.formats) else {
            // Collatable or unknown types: PostgreSQL finishes the order.
            return self.finish(legs, req, f, Some(cols)).await;
        };
        put_preamble(&mut self.client.wbuf, req.shape, Some(&description));
        let (skip, take) = f.bounds();
        let mut cap = req.cap;
        self.k_way(legs, &keys, skip, take, &mut cap, &mut error).await?;
        for leg in legs.iter_mut() {
            Self::drain(leg, |t, body| {
                if t == tag::ERROR_RESPONSE {
                    error.get_or_insert(body);
                }
            })
            .await?;
        }
        match error {
            Some(e) => put_frame(&mut self.client.wbuf, tag::ERROR_RESPONSE, &e),
            None => cap.end(&mut self.client.wbuf),
        }
        Ok(())
    }

    /// Passes on the smallest head row until every leg is done or `take` rows went out.
    async fn k_way(
        &mut self,
        legs: &mut [Pooled],
        keys: &[SortKey],
        skip: u64,
        take: Option<u64>,
        cap: &mut RowCap,
        error: &mut Option<BytesMut>,
    ) -> Result<(), PgError> {
        let mut heads: Vec<Option<BytesMut>> = Vec::with_capacity(legs.len());
        for leg in legs.iter_mut() {
            heads.push(match next_row(leg, error).await? {
                Next::Row(r) => Some(r),
                Next::Done => None,
            });
        }
        let (mut seen, mut sent) = (0u64, 0u64);
        while error.is_none() && take.is_none_or(|t| sent < t) {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                let Some(row) = h else { continue };
                best = match best {
                    Some(b) => {
                        let current = heads[b].as_deref().map(columns).unwrap_or_default();
                        if compare(keys, &columns(row), &current) == std::cmp::Ordering::Less {
                            Some(i)
                        } else {
                            Some(b)
                        }
                    }
                    None => Some(i),
                };
            }
            let Some(b) = best else { break };
            if let Some(row) = heads[b].take() {
                seen += 1;
                if seen > skip {
                    sent += 1;
                    if !cap.admit() {
                        // The Execute's row limit is reached and a row is left: suspended.
                        break;
                    }
                    put_frame(&mut self.client.wbuf, tag::DATA_ROW, &row);
                }
            }
            if self.client.wbuf.len() >= HIGH_WATER {
                self.client.flush().await.map_err(lost)?;
            }
            heads[b] = match next_row(&mut legs[b], error).await? {
                Next::Row(r) => Some(r),
                Next::Done => None,
            };
        }
        Ok(())
    }
}
