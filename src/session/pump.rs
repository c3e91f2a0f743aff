//! The byte pumps of a session. `poll_idle` reads the client until a request starts;
//! `poll_attached` moves both directions at once while a server is attached (client → server
//! and server → client are polled in one function, so a big pipeline or COPY never deadlocks,
//! and it returns Pending only after every operation has registered its waker). `Proto` is the
//! per-session protocol state the frames pass through: the response plan, the client's named
//! statements and their renaming to server-side names (transaction mode), and the split state.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::params::ClientParams;
use super::plan::{Dropped, Event, Plan, QueryFx, Unit, Verdict};
use super::state::{pins_for, ServerSide, SessionState};
use super::stmts::{self, ClientStatements, StatementDef};
use crate::route::session_sql::{effects, query_effects, Effect};
use crate::server::ServerConn;
use crate::wire::backend::{parse_parameter_status, put_ready_for_query, ErrorFields};
use crate::wire::frame::{FrameHead, Splitter, Step};
use crate::wire::{tag, PgError, SqlState};

/// Stop reading a side while this much output for the other side is pending.
pub const HIGH_WATER: usize = 64 * 1024;
/// Frames larger than this are passed through in pieces instead of being held whole.
pub const STREAM_ABOVE: usize = 64 * 1024;
/// Largest server message (PostgreSQL's own limit is 1 GB).
pub const MAX_SERVER_FRAME: usize = 1 << 30;
/// Room for a Bind's portal and statement names (63 bytes each at most, plus NULs).
const BIND_NAMES: usize = 5 + 2 * 64;

pub fn protocol(e: impl std::fmt::Display) -> PgError {
    PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())
}

pub fn reserve_for(buf: &mut BytesMut, need: usize) {
    let want = need.max(buf.len() + 8192);
    if buf.capacity() < want {
        buf.reserve(want - buf.len());
    }
}

/// Protocol state of one session's client↔server stream.
pub struct Proto {
    pub plan: Plan,
    pub stmts: ClientStatements,
    /// Rename named statements to global ones (transaction mode).
    pub rewrite: bool,
    pub to_server: BytesMut,
    pub csplit: Splitter,
    pub ssplit: Splitter,
    pub cneed: usize,
    pub sneed: usize,
    /// After the proxy answered a message with an error: drop messages up to Sync.
    pub client_skip: bool,
    /// Verdict for the rest of a server frame being streamed.
    stream_verdict: Verdict,
    /// A FATAL error from the server passed through.
    pub server_fatal: bool,
    /// The statement of the last Bind (for "cached plan must not change result type").
    last_bound: Option<Arc<str>>,
    /// Statements found stale on this server: the caller tells the pool.
    pub invalidated: Vec<Arc<str>>,
    /// Settings and pins built from completed statements (transaction mode).
    pub state: SessionState,
    /// Effects of the unnamed statement and of bound portals, for Execute.
    unnamed_fx: Vec<Effect>,
    /// The unnamed statement may run on a replica.
    pub unnamed_read: bool,
    portal_fx: Vec<(String, Vec<Effect>)>,
    /// May this session become pinned now? (the pool's cap on pinned clients)
    pub may_pin: bool,
    /// A request that may write ran on the attached server (read-your-writes).
    pub wrote: bool,
    /// The client messages of a read on a replica, kept until its first answer reaches the
    /// client, to run it elsewhere if the replica fails first. `capture_done`: its end (Sync or
    /// Query) was seen.
    pub capture: Option<BytesMut>,
    capture_done: bool,
    /// Set when the server failed in a way that allows running the captured request again.
    pub retry: Option<RetryCause>,
}

impl Proto {
    pub fn new(max_message: usize, rewrite: bool, stmts: ClientStatements) -> Proto {
        Proto {
            plan: Plan::new(b'I'),
            stmts,
            rewrite,
            to_server: BytesMut::with_capacity(8192),
            csplit: Splitter::new(max_message, STREAM_ABOVE),
            ssplit: Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE),
            cneed: 0,
            sneed: 0,
            client_skip: false,
            stream_verdict: Verdict::Forward,
            server_fatal: false,
            last_bound: None,
            invalidated: Vec::new(),
            state: SessionState::default(),
            unnamed_fx: Vec::new(),
            unnamed_read: false,
            portal_fx: Vec::new(),
            may_pin: true,
            wrote: false,
            capture: None,
            capture_done: false,
            retry: None,
        }
    }

    /// Refuses a statement that would pin the session when the pool's cap is reached.
    fn refuse_pin(&mut self, fx: &[Effect]) -> bool {
        if self.may_pin || self.state.pins.any() {
            return false;
        }
        let Some(reason) = fx.iter().find_map(pins_for) else { return false };
        self.refuse(
            PgError::error(
                SqlState::TOO_MANY_CONNECTIONS,
                format!("pgweir: this statement would pin the session to a server ({reason}) and the pool's limit of pinned clients is reached"),
            )
            .with_hint("raise pool.max_pinned, or avoid session state (temp tables, LISTEN, advisory locks, WITH HOLD cursors) in transaction mode"),
        );
        true
    }

    /// Starts keeping the request's messages so a failed replica read can run again.
    pub fn start_capture(&mut self) {
        self.capture = Some(BytesMut::new());
        self.capture_done = false;
        self.retry = None;
    }

    fn capture_client(&mut self, t: u8, frame: &[u8], whole: bool) {
        if self.capture_done {
            return;
        }
        let Some(c) = self.capture.as_mut() else { return };
        if !whole || !replayable(t, &frame[5..]) || c.len() + frame.len() > STREAM_ABOVE {
            self.capture = None;
            return;
        }
        c.extend_from_slice(frame);
        if matches!(t, tag::SYNC | tag::QUERY) {
            self.capture_done = true;
        }
    }

    /// Does this server error allow running the captured request elsewhere?
    fn retry_cause(&self, body: &[u8]) -> Option<RetryCause> {
        if self.capture.is_none() || !self.capture_done {
            return None;
        }
        let f = ErrorFields::parse(body);
        match f.code.as_deref()? {
            "57P01" | "57P02" | "57P03" => Some(RetryCause::MemberLost),
            c if c.starts_with("08") => Some(RetryCause::MemberLost),
            "25006" => Some(RetryCause::NeedsPrimary),
            _ => None,
        }
    }

    /// The server connection ended: can the request run elsewhere?
    pub fn retry_on_loss(&self) -> bool {
        self.capture.is_some() && self.capture_done
    }

    /// A server was just attached (at a ReadyForQuery boundary with `status`).
    pub fn attach(&mut self, status: u8) {
        self.plan = Plan::new(status);
        self.ssplit = Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE);
        self.sneed = 0;
        self.server_fatal = false;
        self.last_bound = None;
    }

    /// Neither side is in the middle of anything.
    pub fn quiet(&self) -> bool {
        self.plan.quiet() && self.to_server.is_empty() && !self.csplit.mid_frame() && !self.ssplit.mid_frame()
    }

    /// Moves client frames to the server's output, renaming statements and planning answers.
    /// Ok(None): the client said Terminate. Ok(Some(n)): the read buffer should hold `n` bytes.
    pub fn forward_client(
        &mut self,
        rbuf: &mut BytesMut,
        server: &mut ServerConn,
        params: &ClientParams,
        to_client: &mut BytesMut,
        split: Option<&super::Context>,
    ) -> Result<Option<usize>, PgError> {
        loop {
            if self.to_server.len() >= HIGH_WATER {
                return Ok(Some(0));
            }
            // A large Bind is streamed, but its names must be here first to rename them.
            if !self.csplit.mid_frame() && rbuf.len() < BIND_NAMES {
                if let Ok(Some(h)) = FrameHead::parse(rbuf, usize::MAX) {
                    if h.tag == tag::BIND && h.total > STREAM_ABOVE && stmts::parse_bind_names(&rbuf[5..]).is_none() {
                        return Ok(Some(BIND_NAMES.min(h.total)));
                    }
                }
            }
            let rewrite = self.rewrite;
            // In transaction mode a Query is read whole: its session effects are in its text.
            let streamable = |t: u8| client_streamable(t) && !(rewrite && t == tag::QUERY);
            match self.csplit.next(rbuf, streamable).map_err(protocol)? {
                Step::Need(n) => return Ok(Some(n)),
                Step::Whole(h) => {
                    if h.tag == tag::TERMINATE {
                        return Ok(None);
                    }
                    self.capture_client(h.tag, &rbuf[..h.total], true);
                    self.client_message(h.tag, &rbuf[..h.total], h.total, server, params, split);
                    rbuf.advance(h.total);
                }
                Step::Partial { head: Some(h), n } => {
                    self.capture_client(h.tag, &rbuf[..n], false);
                    self.client_message(h.tag, &rbuf[..n], h.total, server, params, split);
                    rbuf.advance(n);
                }
                Step::Partial { head: None, n } => {
                    if !self.client_skip {
                        self.to_server.extend_from_slice(&rbuf[..n]);
                    }
                    rbuf.advance(n);
                }
            }
            // Never inside a server message being streamed through.
            if !self.ssplit.mid_frame() {
                self.plan.emit_ready(to_client);
            }
        }
    }

    /// One client message (`frame` is all of it, or its first piece when it is streamed).
    fn client_message(
        &mut self,
        t: u8,
        frame: &[u8],
        total: usize,
        server: &mut ServerConn,
        params: &ClientParams,
        split: Option<&super::Context>,
    ) {
        if self.client_skip {
            if t == tag::SYNC {
                self.client_skip = false;
                self.plan.client(Unit::Sync);
                self.to_server.extend_from_slice(frame);
            }
            return;
        }
        let body = &frame[5.min(frame.len())..];
        let forward = |me: &mut Proto, unit: Option<Unit>| {
            if let Some(u) = unit {
                me.plan.client(u);
            }
            me.to_server.extend_from_slice(frame);
        };
        match t {
            tag::QUERY if self.rewrite => {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                let per_stmt = query_effects(&text);
                let flat: Vec<Effect> = per_stmt.iter().flatten().cloned().collect();
                if self.refuse_pin(&flat) {
                    // A simple Query ends with ReadyForQuery even when refused.
                    self.client_skip = false;
                    let mut rfq = BytesMut::new();
                    put_ready_for_query(&mut rfq, if self.plan.status == 0 { b'I' } else { self.plan.status });
                    self.plan.synthetic(rfq.freeze());
                    return;
                }
                let fx = (!flat.is_empty()).then(|| Box::new(QueryFx::new(per_stmt)));
                forward(self, Some(Unit::Query(fx)));
            }
            tag::QUERY => forward(self, Some(Unit::Query(None))),
            tag::FUNCTION_CALL => forward(self, Some(Unit::FunctionCall)),
            tag::SYNC if self.plan.copy_in => forward(self, None),
            tag::SYNC => forward(self, Some(Unit::Sync)),
            tag::EXECUTE if self.rewrite => {
                let portal = crate::wire::frame::cstr(body).map(|(p, _)| p).unwrap_or(b"");
                let fx = self
                    .portal_fx
                    .iter()
                    .find(|(p, _)| p.as_bytes() == portal)
                    .map(|(_, fx)| fx.clone())
                    .filter(|fx| !fx.is_empty());
                if let Some(fx) = &fx {
                    if self.refuse_pin(fx) {
                        return;
                    }
                }
                forward(self, Some(Unit::Execute(fx.map(Box::new))));
            }
            tag::EXECUTE => forward(self, Some(Unit::Execute(None))),
            tag::COPY_DONE | tag::COPY_FAIL => {
                forward(self, None);
                self.plan.copy_end();
            }
            tag::PARSE if self.rewrite => self.client_parse(frame, body, server, params, split),
            tag::PARSE => forward(self, Some(Unit::Parse { global: None, client: None })),
            tag::BIND if self.rewrite => self.client_bind(frame, body, total, server),
            tag::BIND => forward(self, Some(Unit::Bind)),
            tag::DESCRIBE | tag::CLOSE => match stmts::parse_target(body) {
                Some((b'S', name)) if self.rewrite && !name.is_empty() => {
                    let name = name.to_string();
                    if t == tag::CLOSE {
                        // Other clients may share the server-side statement: only forget ours.
                        self.stmts.remove(&name);
                        self.plan.synthetic(bytes::Bytes::from_static(stmts::CLOSE_COMPLETE));
                    } else if let Some(def) = self.lookup(&name) {
                        self.ensure_prepared(&def, server);
                        self.to_server.extend_from_slice(&stmts::target_frame(tag::DESCRIBE, b'S', &def.global));
                        self.plan.client(Unit::DescribeStatement);
                    }
                }
                Some((kind, _)) => {
                    let unit = match (t, kind) {
                        (tag::CLOSE, _) => Unit::Close(None),
                        (_, b'S') => Unit::DescribeStatement,
                        _ => Unit::DescribePortal,
                    };
                    forward(self, Some(unit));
                }
                // Malformed: let the server say so, in order.
                None => forward(self, Some(if t == tag::CLOSE { Unit::Close(None) } else { Unit::DescribePortal })),
            },
            _ => forward(self, None),
        }
    }

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
            let text = String::from_utf8_lossy(p.query);
            let def = Arc::new(StatementDef {
                parse_frame: stmts::parse_frame(&global, p.query, p.types),
                global,
                effects: effects(&text),
                read: split.is_some_and(|ctx| super::routing::is_read(ctx, &text)),
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

    fn client_parse(
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
        let text = String::from_utf8_lossy(p.query);
        let fx = effects(&text);
        let read = split.is_some_and(|ctx| super::routing::is_read(ctx, &text));
        if p.name.is_empty() {
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

    fn client_bind(&mut self, frame: &[u8], body: &[u8], total: usize, server: &mut ServerConn) {
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
        self.bind_portal(&portal, def.effects.clone());
        self.ensure_prepared(&def, server);
        stmts::put_bind_prefix(&mut self.to_server, total, &portal, stmt.len(), &def.global);
        self.to_server.extend_from_slice(&body[rest_at..]);
        self.plan.client(Unit::Bind);
        self.last_bound = Some(def.global.clone());
    }

    fn bind_portal(&mut self, portal: &str, fx: Vec<Effect>) {
        self.portal_fx.retain(|(p, _)| p != portal);
        if !fx.is_empty() {
            self.portal_fx.push((portal.to_string(), fx));
        }
    }

    /// The client's statement, or an error answered in its place (26000, as PostgreSQL).
    fn lookup(&mut self, name: &str) -> Option<Arc<StatementDef>> {
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
    fn refuse(&mut self, e: PgError) {
        let mut b = BytesMut::new();
        e.encode(&mut b);
        self.plan.synthetic(b.freeze());
        self.client_skip = true;
    }

    /// Prepares the statement on this server first if it lacks it (the answer is swallowed).
    fn ensure_prepared(&mut self, def: &StatementDef, server: &mut ServerConn) {
        if server.prepared.has(&def.global) {
            return;
        }
        self.make_room(def.global.clone(), server);
        self.to_server.extend_from_slice(&def.parse_frame);
        self.plan.injected(Unit::Parse { global: Some(def.global.clone()), client: None });
    }

    /// Records `global` in the server's cache, closing what it evicts.
    fn make_room(&mut self, global: Arc<str>, server: &mut ServerConn) {
        for victim in server.prepared.insert(global) {
            self.close_on_server(&victim);
        }
    }

    pub fn close_on_server(&mut self, global: &Arc<str>) {
        self.to_server.extend_from_slice(&stmts::close_statement_frame(global));
        self.plan.injected(Unit::Close(Some(global.clone())));
    }

    /// Moves server frames to the client's output, swallowing answers to injected messages and
    /// slotting the proxy's own answers in. Returns the bytes the read buffer should hold next.
    pub fn forward_server(
        &mut self,
        server: &mut ServerConn,
        out: &mut BytesMut,
        params: &mut ClientParams,
    ) -> Result<usize, PgError> {
        loop {
            if out.len() >= HIGH_WATER {
                return Ok(0);
            }
            let step =
                self.ssplit.next(&server.rbuf, server_streamable).map_err(|e| protocol(format!("from server: {e}")))?;
            match step {
                Step::Need(n) => return Ok(n),
                Step::Whole(h) => {
                    if self.capture.is_some() {
                        match h.tag {
                            tag::ERROR_RESPONSE => {
                                if let Some(cause) = self.retry_cause(&server.rbuf[5..h.total]) {
                                    // Nothing reached the client yet: swallow this, run it again.
                                    self.retry = Some(cause);
                                    return Ok(0);
                                }
                                self.capture = None;
                            }
                            // A dying server's "terminating connection" warning is not the
                            // client's business when the read will run elsewhere.
                            tag::NOTICE_RESPONSE if self.retry_cause(&server.rbuf[5..h.total]).is_some() => {
                                server.rbuf.advance(h.total);
                                continue;
                            }
                            tag::NOTICE_RESPONSE | tag::PARAMETER_STATUS | tag::NOTIFICATION => {}
                            _ => self.capture = None,
                        }
                    }
                    let frame = server.rbuf.split_to(h.total);
                    let body = &frame[5..];
                    match h.tag {
                        tag::PARAMETER_STATUS => {
                            if let Some((k, v)) = parse_parameter_status(body) {
                                params.on_parameter_status(&k, &v);
                                server.params.insert(k, v);
                            }
                        }
                        tag::ERROR_RESPONSE => self.on_error(body, server),
                        _ => {}
                    }
                    let (verdict, event) = self.plan.on_server(h.tag, body, out);
                    // Completed statements first: a COMMIT's effects precede its ReadyForQuery.
                    for (fx, tag) in std::mem::take(&mut self.plan.completed) {
                        let mut side = ServerSide { applied: &mut server.applied, prepared: &mut server.prepared };
                        self.state.completed(&fx, &tag, params, &mut self.stmts, &mut side);
                    }
                    match event {
                        Event::ParseFailed { global, client } => {
                            server.prepared.remove(&global);
                            if let Some(c) = client {
                                self.stmts.remove_if(&c, &global);
                            }
                        }
                        Event::Ready(status) => {
                            self.state.ready(status);
                            // No transaction open and no batch half-sent: no portal can depend
                            // on a statement any more. Statements bound by requests already
                            // forwarded are used before any Close queued from now on (the
                            // server reads in order), so all may be evicted again: this bounds
                            // the cache under an endless pipeline.
                            if status == b'I' && !self.plan.batch_open() {
                                server.prepared.release();
                            }
                        }
                        Event::None => {}
                    }
                    // Messages the server skipped after an error: their cache changes are undone.
                    for d in std::mem::take(&mut self.plan.dropped) {
                        match d {
                            Dropped::Parse { global, client } => {
                                server.prepared.remove(&global);
                                if let Some(c) = client {
                                    self.stmts.remove_if(&c, &global);
                                }
                            }
                            // The eviction did not happen: close it again, after the Sync.
                            Dropped::Close { global } => self.close_on_server(&global),
                        }
                    }
                    if verdict == Verdict::Forward {
                        out.extend_from_slice(&frame);
                    }
                    self.plan.emit_ready(out);
                }
                Step::Partial { head, n } => {
                    self.capture = None;
                    if let Some(h) = head {
                        self.stream_verdict = self.plan.on_server(h.tag, &server.rbuf[5..n], out).0;
                    }
                    if self.stream_verdict == Verdict::Forward {
                        out.extend_from_slice(&server.rbuf[..n]);
                    }
                    server.rbuf.advance(n);
                }
            }
            server.status = self.plan.status;
        }
    }

    fn on_error(&mut self, body: &[u8], server: &mut ServerConn) {
        let f = ErrorFields::parse(body);
        if f.is_fatal() {
            self.server_fatal = true;
        }
        // The statement's result type changed under it: close it on this server and have the
        // pool drop it everywhere; the client sees this error once.
        if f.code.as_deref() == Some("0A000") && f.message.as_deref() == Some("cached plan must not change result type")
        {
            if let Some(g) = self.last_bound.take() {
                server.prepared.remove(&g);
                self.close_on_server(&g);
                self.invalidated.push(g);
            }
        }
    }
}

/// Parse, Describe and Close are held whole (they are renamed); anything else may stream.
fn client_streamable(t: u8) -> bool {
    !matches!(t, tag::PARSE | tag::DESCRIBE | tag::CLOSE)
}

fn server_streamable(t: u8) -> bool {
    !matches!(t, tag::READY_FOR_QUERY | tag::PARAMETER_STATUS | tag::ERROR_RESPONSE | tag::COPY_IN_RESPONSE)
}

/// What `poll_idle` found.
pub enum Idle {
    Request,
    Terminate,
    Gone,
    Bad(PgError),
}

/// Why `poll_attached` stopped.
pub enum Attached {
    Release,
    ClientGone,
    Terminate,
    ServerGone,
    Bad(PgError),
    /// A read failed on a replica before anything reached the client: run it again elsewhere.
    Retry(RetryCause),
}

/// Why a read is run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// The replica went away (connection lost, shutting down, crashed): try another member.
    MemberLost,
    /// The replica refused it as a write (25006): it belongs on the primary.
    NeedsPrimary,
}

/// Client messages of a request that can be replayed as they are (no statement is named).
fn replayable(t: u8, body: &[u8]) -> bool {
    match t {
        tag::QUERY | tag::SYNC | tag::BIND | tag::EXECUTE | tag::FLUSH => true,
        tag::PARSE => body.first() == Some(&0),
        tag::DESCRIBE | tag::CLOSE => body.get(1) == Some(&0),
        _ => false,
    }
}

/// Writes pending output to a stream; Err(()) if the stream failed.
fn poll_out<S: AsyncWrite + Unpin>(
    s: &mut S,
    cx: &mut TaskContext<'_>,
    buf: &mut BytesMut,
    needs_flush: &mut bool,
) -> Result<bool, ()> {
    let mut progress = false;
    if !buf.is_empty() {
        match Pin::new(&mut *s).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                *needs_flush = true;
                progress = true;
            }
            Poll::Ready(Err(_)) => return Err(()),
            Poll::Pending => {}
        }
    }
    if buf.is_empty() && *needs_flush {
        match Pin::new(&mut *s).poll_flush(cx) {
            Poll::Ready(Ok(())) => *needs_flush = false,
            Poll::Ready(Err(_)) => return Err(()),
            Poll::Pending => {}
        }
    }
    Ok(progress)
}

impl super::relay::Session<'_> {
    pub(super) fn poll_idle(&mut self, cx: &mut TaskContext<'_>) -> Poll<Idle> {
        let max = self.ctx.config.max_message_size;
        loop {
            match poll_out(&mut self.client.stream, cx, &mut self.client.wbuf, &mut self.cflush) {
                Err(()) => return Poll::Ready(Idle::Gone),
                Ok(true) => continue,
                Ok(false) => {}
            }
            match FrameHead::parse(&self.client.rbuf, max) {
                Err(e) => return Poll::Ready(Idle::Bad(protocol(e))),
                Ok(Some(h)) if h.tag == tag::TERMINATE => return Poll::Ready(Idle::Terminate),
                Ok(Some(h)) if self.skip_to_sync => {
                    if self.client.rbuf.len() >= h.total {
                        self.client.rbuf.advance(h.total);
                        if matches!(h.tag, tag::SYNC | tag::QUERY | tag::FUNCTION_CALL) {
                            put_ready_for_query(&mut self.client.wbuf, b'I');
                            self.skip_to_sync = false;
                        }
                        continue;
                    }
                    if h.total > STREAM_ABOVE {
                        return Poll::Ready(Idle::Bad(protocol(
                            "oversized message while discarding a refused request",
                        )));
                    }
                    reserve_for(&mut self.client.rbuf, h.total);
                }
                // Check a server out only once the request's first message is here (or is so
                // large it will be streamed): a client that sends half a header holds nothing.
                Ok(Some(h)) if self.client.rbuf.len() >= h.total.min(STREAM_ABOVE) => {
                    return Poll::Ready(Idle::Request)
                }
                Ok(Some(h)) => reserve_for(&mut self.client.rbuf, h.total.min(STREAM_ABOVE)),
                Ok(None) => {}
            }
            reserve_for(&mut self.client.rbuf, 0);
            match poll_read_buf(Pin::new(&mut self.client.stream), cx, &mut self.client.rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    pub(super) fn poll_attached(&mut self, cx: &mut TaskContext<'_>) -> Poll<Attached> {
        let Some(server) = self.server.as_mut() else { return Poll::Ready(Attached::Release) };
        let server: &mut ServerConn = server;
        let p = &mut self.proto;
        loop {
            let mut progress = false;

            // client → proxy → server
            if self.terminating {
                // PostgreSQL runs what came before a Terminate: so do we, then leave.
                if p.plan.pending_boundaries() == 0 && p.to_server.is_empty() {
                    return Poll::Ready(Attached::Terminate);
                }
            } else {
                if p.to_server.len() < HIGH_WATER {
                    reserve_for(&mut self.client.rbuf, p.cneed);
                    match poll_read_buf(Pin::new(&mut self.client.stream), cx, &mut self.client.rbuf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Attached::ClientGone),
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
                let split = self.login.topology.as_ref().map(|_| self.ctx);
                match p.forward_client(&mut self.client.rbuf, server, &self.params, &mut self.client.wbuf, split) {
                    Err(e) => return Poll::Ready(Attached::Bad(e)),
                    Ok(None) => {
                        self.terminating = true;
                        progress = true;
                    }
                    Ok(Some(need)) => p.cneed = need,
                }
            }
            match poll_out(&mut server.stream, cx, &mut p.to_server, &mut self.sflush) {
                Err(()) => return Poll::Ready(Attached::ServerGone),
                Ok(moved) => progress |= moved,
            }

            // server → proxy → client
            let mut server_eof = false;
            if self.client.wbuf.len() < HIGH_WATER {
                reserve_for(&mut server.rbuf, p.sneed);
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.rbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => server_eof = true,
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
            }
            match p.forward_server(server, &mut self.client.wbuf, &mut self.params) {
                Err(e) => return Poll::Ready(Attached::Bad(e)),
                Ok(need) => p.sneed = need,
            }
            if let Some(cause) = p.retry.take() {
                server.broken = true;
                return Poll::Ready(Attached::Retry(cause));
            }
            // Keep the pool's count of pinned clients current (a pinned client stays here).
            let pinned = p.state.pins.any();
            if pinned != self.counted_pin {
                if pinned {
                    self.login.pool.pin();
                    tracing::debug!(pool = %self.login.pool.name, reasons = ?p.state.pins.reasons(), "client pinned");
                } else {
                    self.login.pool.unpin();
                    tracing::debug!(pool = %self.login.pool.name, "client unpinned");
                }
                self.counted_pin = pinned;
            }
            p.may_pin = self.counted_pin || self.login.pool.may_pin();
            if server_eof {
                server.broken = true;
                if p.retry_on_loss() {
                    return Poll::Ready(Attached::Retry(RetryCause::MemberLost));
                }
                return Poll::Ready(Attached::ServerGone);
            }
            match poll_out(&mut self.client.stream, cx, &mut self.client.wbuf, &mut self.cflush) {
                Ok(moved) => progress |= moved,
                // A client that said Terminate may have closed already: drop its output.
                Err(()) if self.terminating => {
                    self.client.wbuf.clear();
                    self.cflush = false;
                }
                Err(()) => return Poll::Ready(Attached::ClientGone),
            }

            if self.login.mode == crate::config::PoolMode::Transaction
                && !p.state.pins.any()
                && !p.client_skip
                && p.plan.idle()
                && p.to_server.is_empty()
                && !self.sflush
                && !p.csplit.mid_frame()
                && !p.ssplit.mid_frame()
                && server.rbuf.is_empty()
            {
                return Poll::Ready(Attached::Release);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}
