//! The statement half of `Proto` in transaction mode: a client's Parse, Bind, Describe and
//! Close of named statements renamed to global server-side names, prepared lazily (injected
//! Parse, swallowed answer) on whichever server the client has, evicted with Close when the
//! server's cache is full, and requests that only prepare answered without a server.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::params::ClientParams;
use super::plan::Unit;
use super::proto::{Proto, STREAM_ABOVE};
use super::stmts::{self, StatementDef};
use crate::route::session_sql::{effects, Effect};
use crate::server::ServerConn;
use crate::wire::backend::put_ready_for_query;
use crate::wire::frame::FrameHead;
use crate::wire::{tag, PgError, SqlState};

impl Proto {
    /// A request that only prepares named statements (Parse... Sync, as libpq's PQprepare and
    /// pgbench -M prepared send) is answered without a server: the statements are recorded and
    /// prepared on a server at first use. This keeps a client that prepares synchronously from
    /// waiting for a server while its own siblings hold them all (pgbench's threads do exactly
    /// that). The price: a statement with an error is reported at its first use, not here.
    pub fn prepare_locally(
        &mut self,
        client: &mut super::ClientConn,
        params: &ClientParams,
        split: Option<&super::Context>,
    ) -> bool {
        let buf = &client.rbuf;
        let mut at = 0;
        let mut parses = Vec::new();
        loop {
            let Ok(Some(h)) = FrameHead::parse(&buf[at..], STREAM_ABOVE) else { return false };
            if buf.len() < at + h.total {
                return false;
            }
            match h.tag {
                tag::PARSE => match stmts::parse_parse(&buf[at + 5..at + h.total]) {
                    Some(p) if !p.name.is_empty() => parses.push(at..at + h.total),
                    _ => return false,
                },
                tag::SYNC => break,
                _ => return false,
            }
            at += h.total;
        }
        let end = at + 5;
        for range in parses {
            let body = &buf[range.start + 5..range.end];
            let Some(p) = stmts::parse_parse(body) else { return false };
            let global = stmts::global_name(p.query, p.types, params.get("search_path").unwrap_or(""));
            let text = crate::wire::text(p.query);
            let def = Arc::new(StatementDef {
                parse_frame: stmts::parse_frame(&global, p.query, p.types),
                global,
                effects: effects(&text),
                read: split.is_some_and(|ctx| super::routing::is_read(ctx, &text)),
                shape: self.timing.shape(&text),
            });
            match self.stmts.define(p.name, def) {
                Ok(()) => client.wbuf.extend_from_slice(stmts::PARSE_COMPLETE),
                Err(e) => {
                    // As the server would: the error, and nothing more until Sync.
                    e.encode(&mut client.wbuf);
                    break;
                }
            }
        }
        put_ready_for_query(&mut client.wbuf, b'I');
        client.rbuf.advance(end);
        true
    }

    pub(super) fn client_parse(
        &mut self,
        frame: &[u8],
        body: &[u8],
        server: &mut ServerConn,
        params: &ClientParams,
        split: Option<&super::Context>,
    ) {
        let Some(p) = stmts::parse_parse(body) else {
            self.plan.client(Unit::Parse { global: None, client: None });
            self.to_server.extend_from_slice(frame);
            return;
        };
        let text = crate::wire::text(p.query);
        let fx = effects(&text);
        let read = split.is_some_and(|ctx| super::routing::is_read(ctx, &text));
        self.wrote |= split.is_some() && !read;
        if p.name.is_empty() {
            self.timing.parse(&text);
            if self.shard_check.is_some() {
                self.unnamed_text = Some(text.to_string());
            }
            self.unnamed_fx = fx;
            self.unnamed_read = read;
            self.plan.client(Unit::Parse { global: None, client: None });
            self.to_server.extend_from_slice(frame);
            return;
        }
        let global = stmts::global_name(p.query, p.types, params.get("search_path").unwrap_or(""));
        let def = Arc::new(StatementDef {
            parse_frame: stmts::parse_frame(&global, p.query, p.types),
            global: global.clone(),
            effects: fx,
            read,
            shape: self.timing.shape(&text),
        });
        let name = p.name.to_string();
        if let Err(e) = self.stmts.define(&name, def.clone()) {
            return self.refuse(e);
        }
        if server.prepared.has(&global) {
            self.plan.synthetic(bytes::Bytes::from_static(stmts::PARSE_COMPLETE));
        } else {
            self.make_room(global.clone(), server);
            self.to_server.extend_from_slice(&def.parse_frame);
            self.plan.client(Unit::Parse { global: Some(global), client: Some(name) });
        }
    }

    pub(super) fn client_bind(&mut self, frame: &[u8], body: &[u8], total: usize, server: &mut ServerConn) {
        let Some((portal, stmt, rest_at)) = stmts::parse_bind_names(body) else {
            self.plan.client(Unit::Bind);
            self.to_server.extend_from_slice(frame);
            return;
        };
        if stmt.is_empty() {
            let fx = self.unnamed_fx.clone();
            self.bind_portal(portal, fx);
            self.plan.client(Unit::Bind);
            self.to_server.extend_from_slice(frame);
            return;
        }
        let (portal, stmt) = (portal.to_string(), stmt.to_string());
        let Some(def) = self.lookup(&stmt) else { return };
        self.timing.bind(def.shape.as_ref());
        self.wrote |= !def.read;
        self.bind_portal(&portal, def.effects.clone());
        self.ensure_prepared(&def, server);
        stmts::put_bind_prefix(&mut self.to_server, total, &portal, stmt.len(), &def.global);
        self.to_server.extend_from_slice(&body[rest_at..]);
        self.plan.client(Unit::Bind);
        self.last_bound = Some(def.global.clone());
    }

    pub(super) fn bind_portal(&mut self, portal: &str, fx: Vec<Effect>) {
        self.portal_fx.retain(|(p, _)| p != portal);
        if !fx.is_empty() {
            self.portal_fx.push((portal.to_string(), fx));
        }
    }

    /// The client's statement, or an error answered in its place (26000, as PostgreSQL).
    pub(super) fn lookup(&mut self, name: &str) -> Option<Arc<StatementDef>> {
        match self.stmts.get(name) {
            Some(d) => Some(d.clone()),
            None => {
                self.refuse(PgError::error(SqlState("26000"), format!("prepared statement \"{name}\" does not exist")));
                None
            }
        }
    }

    /// The proxy answers the current message with an error; the server never sees the rest of
    /// the batch up to Sync (as if it had failed there).
    pub(super) fn refuse(&mut self, e: PgError) {
        if let Some(m) = &self.metrics {
            m.proxy.error(Some(e.code.0));
        }
        let mut b = BytesMut::new();
        e.encode(&mut b);
        self.plan.synthetic(b.freeze());
        self.client_skip = true;
    }

    /// Prepares the statement on this server first if it lacks it (the answer is swallowed).
    pub(super) fn ensure_prepared(&mut self, def: &StatementDef, server: &mut ServerConn) {
        if server.prepared.has(&def.global) {
            return;
        }
        self.make_room(def.global.clone(), server);
        self.to_server.extend_from_slice(&def.parse_frame);
        self.plan.injected(Unit::Parse { global: Some(def.global.clone()), client: None });
    }

    /// Records `global` in the server's cache, closing what it evicts.
    pub(super) fn make_room(&mut self, global: Arc<str>, server: &mut ServerConn) {
        for victim in server.prepared.insert(global) {
            self.close_on_server(&victim);
        }
    }

    pub fn close_on_server(&mut self, global: &Arc<str>) {
        self.to_server.extend_from_slice(&stmts::close_statement_frame(global));
        self.plan.injected(Unit::Close(Some(global.clone())));
    }
}
