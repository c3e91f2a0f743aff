//! `Proto`: the per-session protocol state client and server frames pass through while a
//! server is attached: the response plan, the client's named statements and their renaming to
//! server-side names (transaction mode, see `proto_stmts`), session effects and pins, the
//! split state of both streams, and the capture that lets a failed replica read run again
//! (`retry`). Pure: no I/O; the pumps in `pump` move the bytes.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use super::params::ClientParams;
use super::plan::{Dropped, Event, Plan, QueryFx, Unit, Verdict};
use super::retry::{Captured, RetryCause};
use super::state::{pins_for, ServerSide, SessionState};
use super::stmts::{self, ClientStatements};
use crate::route::session_sql::{query_effects, Effect};
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
    pub(super) stream_verdict: Verdict,
    /// A FATAL error from the server passed through.
    pub server_fatal: bool,
    /// In transaction mode a server's FATAL is held back (the client stays connected): its
    /// message, for the error the client gets instead.
    pub held_fatal: Option<String>,
    /// The statement of the last Bind (for "cached plan must not change result type").
    pub(super) last_bound: Option<Arc<str>>,
    /// Statements found stale on this server: the caller tells the pool.
    pub invalidated: Vec<Arc<str>>,
    /// Settings and pins built from completed statements (transaction mode).
    pub state: SessionState,
    /// Effects of the unnamed statement and of bound portals, for Execute.
    pub(super) unnamed_fx: Vec<Effect>,
    /// The unnamed statement may run on a replica.
    pub unnamed_read: bool,
    pub(super) portal_fx: Vec<(String, Vec<Effect>)>,
    /// May this session become pinned now? (the pool's cap on pinned clients)
    pub may_pin: bool,
    /// A request that may write ran on the attached server (read-your-writes).
    pub wrote: bool,
    /// The client messages of a read on a replica, kept (and its answer held in the client's
    /// output past `hold` bytes) until it ends, to run it elsewhere if the replica fails first.
    /// `capture_done`: its end (Sync or Query) was seen.
    pub capture: Option<BytesMut>,
    pub(super) capture_done: bool,
    pub hold: usize,
    /// Attached to a replica: one request at a time, so a pipelined write behind a read is
    /// routed on its own (to the primary) instead of following the read.
    pub on_replica: bool,
    /// Set when the server failed in a way that allows running the captured request again.
    pub retry: Option<RetryCause>,
    /// The result cache (writes are tracked only when there is one).
    pub cache: Option<Arc<crate::cache::Cache>>,
    pub cstate: super::invalidate::CacheState,
    /// A sharded or federated database: the target this server belongs to. Outside a
    /// transaction block one request runs at a time (the next one is routed on its own);
    /// inside one, statements for another target are refused.
    pub shard_check: Option<super::sharded::ShardCheck>,
    /// The unnamed statement's text (kept only for `shard_check`).
    pub(super) unnamed_text: Option<String>,
    /// Statements (Query or Bind) of the routed request still to be forwarded unchecked.
    pub shard_skip: usize,
    /// Routing plans by statement shape (sharded databases only).
    pub route_cache: Option<crate::shard::cache::RouteCache>,
    /// A Bind for another target arrived after a Flush: the batch on this server is closed
    /// with an injected Sync, the server released, and the Bind (still in the client's buffer)
    /// routed on its own.
    pub(super) reroute: bool,
    /// A deferred BEGIN was kept back from this server (it only described statements): the
    /// first statement to execute is routed on its own, with the BEGIN in front.
    pub begin_pending: bool,
    /// Statements (Query, Execute, FunctionCall) sent since the server was attached.
    pub queries: u64,
    /// For errors by SQLSTATE class.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Request timing (SHOW QUERIES, slow-query log, request spans).
    pub timing: super::timing::Timing,
    /// Facts about the shapes of the simple queries this client sends.
    pub shapes: super::shapes::Shapes,
}

impl Proto {
    pub fn new(max_message: usize, rewrite: bool, stmts: ClientStatements) -> Proto {
        Proto {
            plan: Plan::new(b'I'),
            stmts,
            rewrite,
            to_server: BytesMut::new(),
            csplit: Splitter::new(max_message, STREAM_ABOVE),
            ssplit: Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE),
            cneed: 0,
            sneed: 0,
            client_skip: false,
            stream_verdict: Verdict::Forward,
            server_fatal: false,
            held_fatal: None,
            last_bound: None,
            invalidated: Vec::new(),
            state: SessionState::default(),
            unnamed_fx: Vec::new(),
            unnamed_read: false,
            portal_fx: Vec::new(),
            may_pin: true,
            wrote: false,
            on_replica: false,
            capture: None,
            capture_done: false,
            hold: 0,
            retry: None,
            cache: None,
            cstate: Default::default(),
            shard_check: None,
            unnamed_text: None,
            shard_skip: 0,
            route_cache: None,
            reroute: false,
            begin_pending: false,
            queries: 0,
            metrics: None,
            timing: super::timing::Timing::new(None, std::time::Duration::ZERO),
            shapes: Default::default(),
        }
    }

    /// Refuses a statement that would pin the session when the pool's cap is reached.
    pub(super) fn refuse_pin(&mut self, fx: &[Effect]) -> bool {
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

    /// A server was just attached (at a ReadyForQuery boundary with `status`).
    pub fn attach(&mut self, status: u8) {
        self.plan.reset(status);
        self.timing.reset();
        self.ssplit = Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE);
        self.sneed = 0;
        self.server_fatal = false;
        self.last_bound = None;
        self.reroute = false;
        self.begin_pending = false;
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
            if self.to_server.len() >= HIGH_WATER || self.reroute {
                return Ok(Some(0));
            }
            let one_at_a_time = self.on_replica || (self.shard_check.is_some() && self.plan.status == b'I');
            if one_at_a_time && !self.csplit.mid_frame() && self.plan.pending_boundaries() > 0 {
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
                    let held_begin = self.begin_pending && matches!(h.tag, tag::QUERY | tag::BIND);
                    if held_begin || (h.tag == tag::BIND && self.belongs_elsewhere(&rbuf[5..h.total])) {
                        // Left in the client's buffer for the next routing decision.
                        self.to_server.extend_from_slice(&[tag::SYNC, 0, 0, 0, 4]);
                        self.plan.injected(Unit::Sync);
                        self.plan.close_batch();
                        self.reroute = true;
                        return Ok(Some(0));
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
    pub(super) fn client_message(
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
                self.timing.sync();
                self.timing.forwarded(self.plan.client_boundaries);
                self.plan.client(Unit::Sync);
                self.to_server.extend_from_slice(frame);
            }
            return;
        }
        let body = &frame[5.min(frame.len())..];
        if matches!(t, tag::QUERY | tag::EXECUTE | tag::FUNCTION_CALL) {
            self.queries += 1;
        }
        // A simple Query's shape, analysed once per shape (the facts below skip what it cannot need).
        let facts = if t == tag::QUERY {
            self.shapes.facts(&crate::wire::text(body.strip_suffix(&[0]).unwrap_or(body)))
        } else {
            None
        };
        self.note_writes(t, body, facts.as_ref());
        let forward = |me: &mut Proto, unit: Option<Unit>| {
            if let Some(u) = unit {
                if matches!(u, Unit::Sync | Unit::Query(_) | Unit::FunctionCall) {
                    me.timing.forwarded(me.plan.client_boundaries);
                }
                me.plan.client(u);
            }
            me.to_server.extend_from_slice(frame);
        };
        match t {
            tag::QUERY
                if self.rewrite
                    && !facts.as_ref().is_some_and(|f| f.no_pgweir)
                    && super::routing::mentions_pgweir_setting(body) =>
            {
                // The proxy's own settings are changed between transactions, where it answers
                // them; here the server would take them as placeholders and ignore them.
                self.refuse(PgError::error(
                    SqlState("25001"),
                    "pgweir: pgweir.* settings can be changed or shown only outside a transaction",
                ));
                self.client_skip = false;
                let mut rfq = BytesMut::new();
                put_ready_for_query(&mut rfq, if self.plan.status == 0 { b'I' } else { self.plan.status });
                self.plan.synthetic(rfq.freeze());
            }
            tag::QUERY if self.rewrite => {
                let text = crate::wire::text(body.strip_suffix(&[0]).unwrap_or(body));
                if let Some(err) = self.shard_refusal(&text, None) {
                    self.refuse(err);
                    self.client_skip = false;
                    let mut rfq = BytesMut::new();
                    put_ready_for_query(&mut rfq, if self.plan.status == 0 { b'I' } else { self.plan.status });
                    self.plan.synthetic(rfq.freeze());
                    return;
                }
                if let Some(ctx) = split {
                    // Read-your-writes: any statement not known to read may write.
                    self.wrote |= !super::routing::is_read(ctx, &text);
                }
                let per_stmt =
                    if facts.as_ref().is_some_and(|f| f.no_effects) { Vec::new() } else { query_effects(&text) };
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
                match &facts {
                    Some(f) => self.timing.query_shape(f),
                    None => self.timing.query(&text),
                }
                forward(self, Some(Unit::Query(fx)));
            }
            tag::QUERY => {
                match &facts {
                    Some(f) => self.timing.query_shape(f),
                    None if self.timing.on() => {
                        self.timing.query(&crate::wire::text(body.strip_suffix(&[0]).unwrap_or(body)))
                    }
                    None => {}
                }
                forward(self, Some(Unit::Query(None)))
            }
            tag::FUNCTION_CALL => forward(self, Some(Unit::FunctionCall)),
            tag::SYNC if self.plan.copy_in => forward(self, None),
            tag::SYNC => {
                self.timing.sync();
                forward(self, Some(Unit::Sync))
            }
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
                self.timing.execute();
                forward(self, Some(Unit::Execute(fx.map(Box::new))));
            }
            tag::EXECUTE => {
                self.timing.execute();
                forward(self, Some(Unit::Execute(None)))
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                forward(self, None);
                self.plan.copy_end();
            }
            tag::PARSE if self.rewrite => self.client_parse(frame, body, server, params, split),
            tag::PARSE => {
                if let Some(p) = stmts::parse_parse(body).filter(|_| self.timing.on()) {
                    self.timing.parse(&crate::wire::text(p.query));
                }
                forward(self, Some(Unit::Parse { global: None, client: None }))
            }
            tag::BIND if self.rewrite => {
                if frame.len() == total {
                    if let Some(err) = self.bind_refusal(body) {
                        return self.refuse(err);
                    }
                }
                self.client_bind(frame, body, total, server)
            }
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
                    // A transaction's writes are invalidated before its end reaches the client.
                    if h.tag == tag::READY_FOR_QUERY && self.writes_due(server.rbuf.get(5).copied().unwrap_or(b'I')) {
                        return Ok(0);
                    }
                    match self.captured_answer(h.tag, &server.rbuf[5..h.total]) {
                        Captured::Retry => return Ok(0),
                        Captured::Swallow => {
                            server.rbuf.advance(h.total);
                            continue;
                        }
                        Captured::Pass => {}
                    }
                    let frame = server.rbuf.split_to(h.total);
                    let body = &frame[5..];
                    if h.tag == tag::READY_FOR_QUERY {
                        self.ready_seen();
                    }
                    match h.tag {
                        tag::PARAMETER_STATUS => {
                            if let Some((k, v)) = parse_parameter_status(body) {
                                params.on_parameter_status(&k, &v);
                                server.params.insert(k, v);
                                server.synced = 0;
                            }
                        }
                        tag::ERROR_RESPONSE => {
                            let f = ErrorFields::parse(body);
                            if let Some(m) = &self.metrics {
                                m.proxy.error(f.code.as_deref());
                            }
                            if f.is_fatal() && self.rewrite {
                                // The server is going away; the session answers the client.
                                self.held_fatal = Some(f.to_string());
                                continue;
                            }
                            self.on_error(body, server);
                        }
                        _ => {}
                    }
                    let (verdict, event) = self.plan.on_server(h.tag, body, out);
                    // Completed statements first: a COMMIT's effects precede its ReadyForQuery.
                    for (fx, tag) in std::mem::take(&mut self.plan.completed) {
                        // The statement may have changed a setting on the server.
                        server.synced = 0;
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
                            use crate::metrics::proxy::RouteLabel;
                            let route = if self.on_replica { RouteLabel::Replica } else { RouteLabel::Primary };
                            self.timing.answered_up_to(self.plan.client_ready, route);
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
                        self.tee(h.tag, &frame);
                        out.extend_from_slice(&frame);
                    }
                    self.plan.emit_ready(out);
                }
                Step::Partial { head, n } => {
                    self.capture = None;
                    if let Some(h) = head {
                        self.stream_verdict = self.plan.on_server(h.tag, &server.rbuf[5..n], out).0;
                        self.tee_streamed();
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

    pub(super) fn on_error(&mut self, body: &[u8], server: &mut ServerConn) {
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
