//! The session loop. Idle (no server): read the client until a request starts. Attached: pump
//! both directions at once (client → server and server → client are polled together, so a big
//! pipeline or COPY never deadlocks), forwarding frames as raw bytes and looking only at the
//! tags that mark request and transaction boundaries. In transaction mode the server goes back
//! to the pool when ReadyForQuery says idle and no request is outstanding.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::cancel::CancelGuard;
use super::params::ClientParams;
use super::welcome::{Welcome, WelcomeKey};
use super::{ClientConn, Context, Login};
use crate::config::PoolMode;
use crate::pool::{discard, Pooled};
use crate::server::{ClientFacing, ServerConn};
use crate::wire::backend::{put_backend_key_data, put_parameter_status, put_ready_for_query, ErrorFields};
use crate::wire::frame::{FrameHead, Splitter, Step};
use crate::wire::{tag, PgError, SqlState};

/// Stop reading a side while this much output for the other side is pending.
const HIGH_WATER: usize = 64 * 1024;
/// Frames larger than this are passed through in pieces instead of being held whole.
const STREAM_ABOVE: usize = 64 * 1024;
/// Largest server message (PostgreSQL's own limit is 1 GB).
const MAX_SERVER_FRAME: usize = 1 << 30;

/// Request/transaction bookkeeping for the attached server.
#[derive(Debug, Default)]
struct Txn {
    /// ReadyForQuery messages still owed by the server (one per Query, Sync, FunctionCall).
    pending: u32,
    /// Extended-protocol messages sent since the last Sync (asyncpg's Parse/Describe/Flush).
    unsynced: bool,
    copy_in: bool,
    /// Syncs sent after the last Execute, before any CopyDone/CopyFail/Query. If that Execute
    /// starts a COPY FROM STDIN, the server ignores them (it is in copy-in mode when they
    /// arrive), so they owe no ReadyForQuery. tokio-postgres sends Bind/Execute/Sync this way.
    syncs_after_execute: u32,
    counting_syncs: bool,
    /// The COPY in progress was started by Execute: its CopyDone/CopyFail must be followed by
    /// a Sync before the server is idle.
    copy_extended: bool,
    /// Last ReadyForQuery status.
    status: u8,
    /// A ReadyForQuery arrived since this server was attached.
    rfq_seen: bool,
}

impl Txn {
    fn on_client(&mut self, t: u8) {
        match t {
            tag::QUERY | tag::FUNCTION_CALL => {
                self.pending += 1;
                self.counting_syncs = false;
            }
            tag::SYNC if !self.copy_in => {
                self.pending += 1;
                self.unsynced = false;
                if self.counting_syncs {
                    self.syncs_after_execute += 1;
                }
            }
            tag::EXECUTE => {
                self.unsynced = true;
                self.syncs_after_execute = 0;
                self.counting_syncs = true;
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE => self.unsynced = true,
            tag::COPY_DONE | tag::COPY_FAIL => {
                self.copy_in = false;
                self.counting_syncs = false;
                if self.copy_extended {
                    self.unsynced = true;
                    self.copy_extended = false;
                }
            }
            _ => {}
        }
    }

    /// The server entered COPY FROM STDIN mode.
    fn on_copy_in(&mut self) {
        self.copy_in = true;
        self.copy_extended = self.counting_syncs;
        self.pending = self.pending.saturating_sub(self.syncs_after_execute);
        self.syncs_after_execute = 0;
        self.counting_syncs = false;
    }

    fn idle(&self) -> bool {
        self.rfq_seen && self.pending == 0 && !self.unsynced && !self.copy_in && self.status == b'I'
    }
}

enum Idle {
    Request,
    Terminate,
    Gone,
    Bad(PgError),
}

enum Attached {
    Release,
    ClientGone,
    Terminate,
    ServerGone,
    Bad(PgError),
}

pub(super) struct Session<'a> {
    ctx: &'a Context,
    client: ClientConn,
    login: Login,
    cancel: CancelGuard<'a>,
    server: Option<Pooled>,
    params: ClientParams,
    to_server: BytesMut,
    csplit: Splitter,
    ssplit: Splitter,
    txn: Txn,
    /// Bytes the next client/server frame needs in the read buffer.
    cneed: usize,
    sneed: usize,
    cflush: bool,
    sflush: bool,
    /// After a refused request in the extended protocol: drop messages until Sync.
    skip_to_sync: bool,
    server_fatal: bool,
    /// The client sent Terminate while attached: finish what it already sent, then leave.
    terminating: bool,
}

/// SQLSTATEs a server may report for a bad startup setting, as static codes.
fn startup_setting_code(code: Option<&str>) -> &'static str {
    match code {
        Some("22023") => "22023",
        Some("42704") => "42704",
        Some("22P02") => "22P02",
        _ => "08P01",
    }
}

fn protocol(e: impl std::fmt::Display) -> PgError {
    PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string())
}

fn reserve_for(buf: &mut BytesMut, need: usize) {
    let want = need.max(buf.len() + 8192);
    if buf.capacity() < want {
        buf.reserve(want - buf.len());
    }
}

impl<'a> Session<'a> {
    pub fn new(ctx: &'a Context, client: ClientConn, login: Login, cancel: CancelGuard<'a>) -> Session<'a> {
        let max = ctx.config.max_message_size;
        Session {
            ctx,
            client,
            login,
            cancel,
            server: None,
            params: ClientParams::default(),
            to_server: BytesMut::with_capacity(8192),
            csplit: Splitter::new(max, STREAM_ABOVE),
            ssplit: Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE),
            txn: Txn::default(),
            cneed: 0,
            sneed: 0,
            cflush: false,
            sflush: false,
            skip_to_sync: false,
            server_fatal: false,
            terminating: false,
        }
    }

    pub async fn run(&mut self) {
        if let Err(e) = self.start().await {
            e.encode(&mut self.client.wbuf);
            let _ = self.client.flush().await;
            return;
        }
        loop {
            if self.server.is_none() {
                match poll_fn(|cx| self.poll_idle(cx)).await {
                    Idle::Request => {
                        if let Err(e) = self.acquire().await {
                            self.refuse_request(e);
                            continue;
                        }
                    }
                    Idle::Terminate | Idle::Gone => return,
                    Idle::Bad(e) => return self.client.fatal(e).await,
                }
            }
            match poll_fn(|cx| self.poll_attached(cx)).await {
                Attached::Release => self.release().await,
                Attached::ClientGone | Attached::Terminate => return self.finish_server().await,
                Attached::ServerGone => {
                    if let Some(s) = self.server.take() {
                        discard(s);
                    }
                    self.cancel.slot.detach().await;
                    if !self.server_fatal {
                        PgError::fatal(
                            SqlState::CONNECTION_FAILURE,
                            "pgweir: server closed the connection unexpectedly",
                        )
                        .with_detail("The server process may have been terminated; the transaction, if any, is lost.")
                        .encode(&mut self.client.wbuf);
                    }
                    let _ = self.client.flush().await;
                    return;
                }
                Attached::Bad(e) => {
                    if let Some(s) = self.server.take() {
                        discard(s);
                    }
                    self.cancel.slot.detach().await;
                    return self.client.fatal(e).await;
                }
            }
        }
    }

    /// Finishes the startup: the parameter report the client expects, then BackendKeyData and
    /// ReadyForQuery. In transaction mode a login whose settings were seen before is answered
    /// from the welcome cache without a server, so logins never queue behind busy pools.
    async fn start(&mut self) -> Result<(), ClientFacing> {
        let key = WelcomeKey::new(&self.login);
        let cached = match self.login.mode {
            PoolMode::Transaction => self.ctx.welcomes.get(&key),
            PoolMode::Session => None,
        };
        let report = match cached {
            Some(w) => {
                self.params = w.client;
                w.report
            }
            None => {
                let server = self.first_server().await?;
                let mut report: Vec<(String, String)> =
                    server.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                report.sort();
                if self.login.mode == PoolMode::Session {
                    self.cancel.slot.attach(server.cancel_key.clone());
                    self.attach(server);
                } else {
                    self.ctx.welcomes.put(key, Welcome { report: report.clone(), client: self.params.clone() });
                }
                report
            }
        };
        for (k, v) in &report {
            put_parameter_status(&mut self.client.wbuf, k, v);
        }
        put_backend_key_data(&mut self.client.wbuf, self.cancel.pid, self.cancel.secret);
        put_ready_for_query(&mut self.client.wbuf, b'I');
        tracing::debug!(peer = %self.client.peer, user = %self.login.user, db = %self.login.database, "client logged in");
        self.client.flush().await.map_err(|_| ClientFacing::Error(protocol("client went away")))?;
        Ok(())
    }

    /// A server with the client's startup settings applied (which checks them).
    async fn first_server(&mut self) -> Result<Pooled, ClientFacing> {
        let pool = self.login.pool.clone();
        let mut server = pool.checkout().await.map_err(|e| match e {
            crate::pool::CheckoutError::Server(s) => s.client_error(),
            other => {
                let mut pe = other.to_pg();
                pe.severity = crate::wire::error::Severity::Fatal;
                ClientFacing::Error(pe)
            }
        })?;
        self.params = ClientParams::new(pool.defaults(), &self.login.settings);
        if let Some((sql, next)) = self.params.sync_sql(&server.params, &server.applied) {
            match server.run_control(&sql).await {
                Ok(None) => server.applied = next,
                Ok(Some(err)) => {
                    // An invalid startup setting: PostgreSQL refuses the connection the same way.
                    let _ = server.run_control("RESET ALL").await;
                    server.applied.clear();
                    return Err(ClientFacing::Error(PgError::fatal(
                        SqlState(startup_setting_code(err.code.as_deref())),
                        err.message.unwrap_or_else(|| "invalid startup parameter".into()),
                    )));
                }
                Err(e) => {
                    discard(server);
                    return Err(e.client_error());
                }
            }
        }
        self.params.adopt_reported(&server.params);
        Ok(server)
    }

    fn attach(&mut self, server: Pooled) {
        self.txn = Txn { status: server.status, ..Txn::default() };
        self.ssplit = Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE);
        self.sneed = 0;
        self.sflush = false;
        self.server_fatal = false;
        self.server = Some(server);
    }

    /// Checks a server out for the request at the front of the client's buffer (or gives up
    /// when the client cancels or the wait times out) and brings its settings in line.
    async fn acquire(&mut self) -> Result<(), PgError> {
        let pool = self.login.pool.clone();
        let slot = self.cancel.slot.clone();
        let mut server = {
            let notified = slot.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            tokio::select! {
                r = pool.checkout() => r.map_err(|e| e.to_pg())?,
                _ = notified => return Err(PgError::error(SqlState::QUERY_CANCELED, "canceling statement due to user request")),
            }
        };
        if let Some((sql, next)) = self.params.sync_sql(&server.params, &server.applied) {
            match server.run_control(&sql).await {
                Ok(None) => server.applied = next,
                Ok(Some(err)) => {
                    // The server may still carry another client's settings: never use it.
                    tracing::warn!(pool = %pool.name, error = %err, "could not apply client settings; closing the server");
                    discard(server);
                    return Err(PgError::error(
                        SqlState::CONNECTION_EXCEPTION,
                        format!("pgweir: could not restore this session's settings on a server: {err}"),
                    ));
                }
                Err(e) => {
                    discard(server);
                    return Err(PgError::error(SqlState::CONNECTION_FAILURE, format!("pgweir: {e}")));
                }
            }
        }
        self.cancel.slot.attach(server.cancel_key.clone());
        self.attach(server);
        Ok(())
    }

    async fn release(&mut self) {
        let tainted = self.cancel.slot.detach().await;
        if let Some(server) = self.server.take() {
            if tainted {
                // A cancel for this server may still arrive late: it must not hit someone else.
                discard(server);
            }
        }
    }

    /// The client left while holding a server: make the server clean or close it.
    async fn finish_server(&mut self) {
        let Some(mut server) = self.server.take() else { return };
        let tainted = self.cancel.slot.detach().await;
        let quiet = self.txn.pending == 0
            && !self.txn.unsynced
            && !self.txn.copy_in
            && self.to_server.is_empty()
            && !self.csplit.mid_frame()
            && !self.ssplit.mid_frame();
        let mut clean = quiet && !tainted && server.rollback_if_needed().await;
        if clean && self.login.mode == PoolMode::Session {
            clean = matches!(server.run_control("DISCARD ALL").await, Ok(None));
            server.applied.clear();
        }
        if clean {
            drop(server);
        } else {
            tracing::debug!(pool = %self.login.pool.name, "closing a server connection its client left mid-request");
            discard(server);
        }
    }

    /// Answers a request that cannot be served (wait timeout, cancel) with an error; the
    /// request's messages are then dropped up to its end (Query, FunctionCall or Sync), which
    /// gets the ReadyForQuery, so the client's next request starts clean.
    fn refuse_request(&mut self, err: PgError) {
        err.encode(&mut self.client.wbuf);
        self.skip_to_sync = true;
    }

    fn poll_idle(&mut self, cx: &mut TaskContext<'_>) -> Poll<Idle> {
        let max = self.ctx.config.max_message_size;
        loop {
            if !self.client.wbuf.is_empty() {
                match Pin::new(&mut self.client.stream).poll_write(cx, &self.client.wbuf) {
                    Poll::Ready(Ok(n)) => {
                        self.client.wbuf.advance(n);
                        self.cflush = true;
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                    Poll::Pending => {}
                }
            } else if self.cflush {
                match Pin::new(&mut self.client.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.cflush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                    Poll::Pending => {}
                }
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

    fn poll_attached(&mut self, cx: &mut TaskContext<'_>) -> Poll<Attached> {
        let Some(server) = self.server.as_mut() else { return Poll::Ready(Attached::Release) };
        let server: &mut ServerConn = server;
        loop {
            let mut progress = false;

            // client → proxy → server
            if self.terminating {
                // PostgreSQL runs what came before a Terminate: so do we, then leave.
                if self.txn.pending == 0 && self.to_server.is_empty() {
                    return Poll::Ready(Attached::Terminate);
                }
            } else {
                if self.to_server.len() < HIGH_WATER {
                    reserve_for(&mut self.client.rbuf, self.cneed);
                    match poll_read_buf(Pin::new(&mut self.client.stream), cx, &mut self.client.rbuf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Attached::ClientGone),
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Pending => {}
                    }
                }
                match forward_client(&mut self.client.rbuf, &mut self.to_server, &mut self.csplit, &mut self.txn) {
                    Err(e) => return Poll::Ready(Attached::Bad(e)),
                    Ok(None) => {
                        self.terminating = true;
                        progress = true;
                    }
                    Ok(Some(need)) => self.cneed = need,
                }
            }
            if !self.to_server.is_empty() {
                match Pin::new(&mut server.stream).poll_write(cx, &self.to_server) {
                    Poll::Ready(Ok(n)) => {
                        self.to_server.advance(n);
                        self.sflush = true;
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Attached::ServerGone),
                    Poll::Pending => {}
                }
            }
            if self.to_server.is_empty() && self.sflush {
                match Pin::new(&mut server.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.sflush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(Attached::ServerGone),
                    Poll::Pending => {}
                }
            }

            // server → proxy → client
            let mut server_eof = false;
            if self.client.wbuf.len() < HIGH_WATER {
                reserve_for(&mut server.rbuf, self.sneed);
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.rbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => server_eof = true,
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
            }
            let forwarded = forward_server(
                &mut server.rbuf,
                &mut self.client.wbuf,
                &mut self.ssplit,
                &mut self.txn,
                &mut ServerView { params: &mut server.params, client: &mut self.params, fatal: &mut self.server_fatal },
            );
            match forwarded {
                Err(e) => return Poll::Ready(Attached::Bad(e)),
                Ok(need) => self.sneed = need,
            }
            if server_eof {
                server.broken = true;
                return Poll::Ready(Attached::ServerGone);
            }
            server.status = self.txn.status;
            if !self.client.wbuf.is_empty() {
                match Pin::new(&mut self.client.stream).poll_write(cx, &self.client.wbuf) {
                    Poll::Ready(Ok(n)) => {
                        self.client.wbuf.advance(n);
                        self.cflush = true;
                        progress = true;
                    }
                    // A client that said Terminate may have closed already: drop its output.
                    Poll::Ready(Err(_)) if self.terminating => {
                        self.client.wbuf.clear();
                        self.cflush = false;
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Attached::ClientGone),
                    Poll::Pending => {}
                }
            }
            if self.client.wbuf.is_empty() && self.cflush {
                match Pin::new(&mut self.client.stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.cflush = false,
                    Poll::Ready(Err(_)) if self.terminating => self.cflush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(Attached::ClientGone),
                    Poll::Pending => {}
                }
            }

            if self.login.mode == PoolMode::Transaction
                && self.txn.idle()
                && self.to_server.is_empty()
                && !self.sflush
                && !self.csplit.mid_frame()
                && !self.ssplit.mid_frame()
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

/// Moves whole (or streamed) client frames to the server's output. Ok(None): the client said
/// Terminate. Ok(Some(n)): the read buffer should hold `n` bytes for the next frame.
fn forward_client(
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    split: &mut Splitter,
    txn: &mut Txn,
) -> Result<Option<usize>, PgError> {
    loop {
        if out.len() >= HIGH_WATER {
            return Ok(Some(0));
        }
        match split.next(rbuf, |_| true).map_err(protocol)? {
            Step::Need(n) => return Ok(Some(n)),
            Step::Whole(h) => {
                if h.tag == tag::TERMINATE {
                    return Ok(None);
                }
                txn.on_client(h.tag);
                out.extend_from_slice(&rbuf[..h.total]);
                rbuf.advance(h.total);
            }
            Step::Partial { head, n } => {
                if let Some(h) = head {
                    txn.on_client(h.tag);
                }
                out.extend_from_slice(&rbuf[..n]);
                rbuf.advance(n);
            }
        }
    }
}

/// What server frames may update besides the transaction state.
struct ServerView<'a> {
    params: &'a mut std::collections::HashMap<String, String>,
    client: &'a mut ClientParams,
    fatal: &'a mut bool,
}

fn server_streamable(t: u8) -> bool {
    !matches!(t, tag::READY_FOR_QUERY | tag::PARAMETER_STATUS | tag::ERROR_RESPONSE | tag::COPY_IN_RESPONSE)
}

/// Moves server frames to the client's output, noting transaction boundaries and settings.
fn forward_server(
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    split: &mut Splitter,
    txn: &mut Txn,
    view: &mut ServerView<'_>,
) -> Result<usize, PgError> {
    loop {
        if out.len() >= HIGH_WATER {
            return Ok(0);
        }
        match split.next(rbuf, server_streamable).map_err(|e| protocol(format!("from server: {e}")))? {
            Step::Need(n) => return Ok(n),
            Step::Whole(h) => {
                let body = &rbuf[5..h.total];
                match h.tag {
                    tag::READY_FOR_QUERY => {
                        txn.status = body.first().copied().unwrap_or(b'I');
                        txn.pending = txn.pending.saturating_sub(1);
                        txn.rfq_seen = true;
                        txn.copy_in = false;
                    }
                    tag::PARAMETER_STATUS => {
                        if let Some((k, v)) = crate::wire::backend::parse_parameter_status(body) {
                            view.client.on_parameter_status(&k, &v);
                            view.params.insert(k, v);
                        }
                    }
                    tag::ERROR_RESPONSE => {
                        txn.copy_in = false;
                        if ErrorFields::parse(body).is_fatal() {
                            *view.fatal = true;
                        }
                    }
                    tag::COPY_IN_RESPONSE => txn.on_copy_in(),
                    _ => {}
                }
                out.extend_from_slice(&rbuf[..h.total]);
                rbuf.advance(h.total);
            }
            Step::Partial { n, .. } => {
                out.extend_from_slice(&rbuf[..n]);
                rbuf.advance(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfq(t: &mut Txn, status: u8) {
        t.status = status;
        t.pending = t.pending.saturating_sub(1);
        t.rfq_seen = true;
    }

    #[test]
    fn simple_query_round_trip_ends_idle() {
        let mut t = Txn { status: b'I', ..Txn::default() };
        assert!(!t.idle(), "nothing happened yet");
        t.on_client(tag::QUERY);
        assert!(!t.idle());
        rfq(&mut t, b'I');
        assert!(t.idle());
    }

    #[test]
    fn open_transaction_is_not_idle() {
        let mut t = Txn::default();
        t.on_client(tag::QUERY);
        rfq(&mut t, b'T');
        assert!(!t.idle());
    }

    #[test]
    fn pipelined_syncs_wait_for_every_ready_for_query() {
        let mut t = Txn::default();
        for _ in 0..3 {
            for m in [tag::BIND, tag::EXECUTE, tag::SYNC] {
                t.on_client(m);
            }
        }
        rfq(&mut t, b'I');
        rfq(&mut t, b'I');
        assert!(!t.idle());
        rfq(&mut t, b'I');
        assert!(t.idle());
    }

    #[test]
    fn flush_without_sync_holds_the_server() {
        let mut t = Txn::default();
        t.on_client(tag::QUERY);
        rfq(&mut t, b'I');
        for m in [tag::PARSE, tag::DESCRIBE, tag::FLUSH] {
            t.on_client(m);
        }
        assert!(!t.idle(), "asyncpg will Bind/Execute later on the same server");
        t.on_client(tag::SYNC);
        rfq(&mut t, b'I');
        assert!(t.idle());
    }

    #[test]
    fn sync_after_copy_execute_owes_nothing() {
        // tokio-postgres: Bind, Execute, Sync, then CopyData..., CopyDone, Sync.
        let mut t = Txn::default();
        for m in [tag::BIND, tag::EXECUTE, tag::SYNC] {
            t.on_client(m);
        }
        t.on_copy_in();
        for m in [tag::COPY_DATA, tag::SYNC, tag::COPY_DONE, tag::SYNC] {
            t.on_client(m);
        }
        assert_eq!(t.pending, 1);
        rfq(&mut t, b'I');
        assert!(t.idle());
    }

    #[test]
    fn simple_copy_counts_its_query_once() {
        let mut t = Txn::default();
        t.on_client(tag::QUERY);
        t.on_copy_in();
        t.on_client(tag::COPY_DATA);
        t.on_client(tag::COPY_DONE);
        assert_eq!(t.pending, 1);
        rfq(&mut t, b'I');
        assert!(t.idle());
    }
}
