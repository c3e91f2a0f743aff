//! The session's side of the result cache: a request that arrives outside a transaction block
//! and that a rule (or hint) asks to cache is looked up before any server is checked out; a hit
//! is answered from the stored frames, a miss runs on the primary (so a fill is never older than
//! the last invalidating write) with its response teed into the cache. Also the bumps of table
//! versions that commits owe.

use bytes::Buf;

use super::relay::Session;
use super::stmts;
use crate::cache::request::{self, NotCacheable};
use crate::cache::{Ask, Fill, Lookup, Refusal, Writes};
use crate::config::PoolMode;

pub(super) enum CacheStep {
    /// Answered from the cache; the request is consumed.
    Answered,
    /// Run it (on the primary) and tee the response into this fill.
    Fill(Box<Fill>),
    /// Not the cache's business.
    Pass,
}

impl Session<'_> {
    pub(super) async fn cache_request(&mut self) -> CacheStep {
        let Some(cache) = self.ctx.cache.clone() else { return CacheStep::Pass };
        let started = std::time::Instant::now();
        if self.login.mode != PoolMode::Transaction
            || self.deferred_begin.is_some()
            || self.server.is_some()
            || self.proto.state.pins.any()
        {
            return CacheStep::Pass;
        }
        let req = match request::parse(&self.client.rbuf) {
            Ok(r) => r,
            Err(NotCacheable::RowLimit) => {
                // Counted only if a rule would have cached the statement.
                if let Some(text) = self.bound_text(&self.client.rbuf) {
                    if cache.wanted(&text).is_some() {
                        cache.refused(Refusal::RowLimit);
                    }
                }
                return CacheStep::Pass;
            }
            Err(NotCacheable::Shape) => return CacheStep::Pass,
        };
        // Borrowed until a rule matches: requests no rule wants cost no allocation.
        let def = match req.text {
            Some(_) => None,
            None => match self.proto.stmts.get(req.statement) {
                Some(d) => Some(d.clone()),
                None => return CacheStep::Pass,
            },
        };
        let parsed = def.as_ref().and_then(|d| stmts::parse_parse(&d.parse_frame[5..]));
        let (text, types) = match (req.text, &parsed) {
            (Some(t), _) => (t, req.types),
            (None, Some(p)) => (p.query, p.types),
            (None, None) => return CacheStep::Pass,
        };
        let Ok(text) = std::str::from_utf8(text) else { return CacheStep::Pass };
        let Some((matched, facts)) = cache.wanted(text) else { return CacheStep::Pass };
        let (text, types, bind) = (text.to_string(), types.to_vec(), req.bind.to_vec());
        let (shape, len) = (req.shape, req.len);
        let settings = self.params.key_settings();
        let ask = Ask {
            database: &self.login.cache_db,
            user: &self.login.user,
            settings: &settings,
            shape,
            text: &text,
            types: &types,
            bind: &bind,
        };
        match cache.lookup(&ask, matched, &facts).await {
            Lookup::Hit(stored) => {
                request::respond(&mut self.client.wbuf, shape, &stored);
                let took = started.elapsed();
                self.proto.timing.answered(&text, crate::metrics::proxy::RouteLabel::Cache, took);
                self.client.rbuf.advance(len);
                CacheStep::Answered
            }
            Lookup::Miss(fill) => CacheStep::Fill(Box::new(fill)),
            Lookup::Bypass => CacheStep::Pass,
        }
    }

    /// The statement text of a Bind at the front of `buf` (after an unnamed Parse, or of a
    /// named statement this client prepared).
    fn bound_text(&self, buf: &[u8]) -> Option<String> {
        let h = crate::wire::FrameHead::parse(buf, usize::MAX).ok()??;
        let body = buf.get(5..h.total)?;
        let query = match h.tag {
            crate::wire::tag::PARSE => stmts::parse_parse(body)?.query.to_vec(),
            crate::wire::tag::BIND => {
                let (_, stmt, _) = stmts::parse_bind_names(body)?;
                let def = self.proto.stmts.get(stmt)?;
                stmts::parse_parse(&def.parse_frame[5..])?.query.to_vec()
            }
            _ => return None,
        };
        String::from_utf8(query).ok()
    }

    /// Bumps the versions a finished transaction wrote, before its ReadyForQuery goes out.
    pub(super) async fn invalidate_due(&mut self) {
        let due = self.proto.cstate.due.take();
        if let (Some(cache), Some(w)) = (&self.ctx.cache, due) {
            cache.invalidate(&self.login.cache_db, &w).await;
        }
    }

    /// Writes whose outcome is unknown (the server or the client went away): bumped in the
    /// background, since they may have committed.
    pub(super) fn settle_writes_later(&mut self) {
        let w = self.proto.take_unsettled_writes();
        if let (Some(cache), false) = (&self.ctx.cache, w == Writes::None) {
            let (cache, db) = (cache.clone(), self.login.cache_db.clone());
            tokio::spawn(async move { cache.invalidate(&db, &w).await });
        }
    }
}
