//! The byte pumps of a session. `poll_idle` reads the client until a request starts;
//! `poll_attached` moves both directions at once while a server is attached (client → server
//! and server → client are polled in one function, so a big pipeline or COPY never deadlocks,
//! and it returns Pending only after every operation has registered its waker).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::proto::{protocol, reserve_for, HIGH_WATER, STREAM_ABOVE};
use super::retry::RetryCause;
use crate::server::ServerConn;
use crate::wire::backend::put_ready_for_query;
use crate::wire::frame::FrameHead;
use crate::wire::{tag, PgError};

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
    /// A transaction that wrote has ended: bump the cache's table versions before its
    /// ReadyForQuery (held in the server's buffer) goes to the client.
    Invalidate,
}

/// The first read of an idle session's next request (more is reserved once its size is known).
const IDLE_READ: usize = 1024;

/// Writes pending output to a stream, only its first `*limit` bytes when a limit is given (the
/// rest is held back; the limit shrinks by what was written); Err(()) if the stream failed.
fn poll_out<S: AsyncWrite + Unpin>(
    s: &mut S,
    cx: &mut TaskContext<'_>,
    buf: &mut BytesMut,
    needs_flush: &mut bool,
    mut limit: Option<&mut usize>,
) -> Result<bool, ()> {
    let mut progress = false;
    let writable = limit.as_deref().map_or(buf.len(), |l| (*l).min(buf.len()));
    if writable > 0 {
        match Pin::new(&mut *s).poll_write(cx, &buf[..writable]) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                if let Some(l) = limit.as_deref_mut() {
                    *l -= n;
                }
                *needs_flush = true;
                progress = true;
            }
            Poll::Ready(Err(_)) => return Err(()),
            Poll::Pending => {}
        }
    }
    let pending = limit.map_or(buf.len(), |l| (*l).min(buf.len()));
    if pending == 0 && *needs_flush {
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
        self.cancel.slot.kill_waker.register(cx.waker());
        if self.cancel.slot.is_killed() {
            return Poll::Ready(Idle::Bad(PgError::fatal(
                crate::wire::SqlState("57P01"),
                "terminating connection due to administrator command",
            )));
        }
        let max = self.ctx.config.max_message_size;
        loop {
            match poll_out(&mut self.client.stream, cx, &mut self.client.wbuf, &mut self.cflush, None) {
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
                    // Buffers given back while idle: one small allocation each, not a string
                    // of reallocations as the answer grows.
                    if self.client.wbuf.capacity() == 0 {
                        self.client.wbuf.reserve(IDLE_READ);
                    }
                    if self.proto.to_server.capacity() == 0 {
                        self.proto.to_server.reserve(IDLE_READ);
                    }
                    return Poll::Ready(Idle::Request);
                }
                Ok(Some(h)) => reserve_for(&mut self.client.rbuf, h.total.min(STREAM_ABOVE)),
                Ok(None) => {}
            }
            if self.client.rbuf.is_empty() {
                // Between requests a session holds no buffers (memory per idle client): a plain
                // socket is asked for readiness before it is given one.
                if let crate::net::Stream::Plain(tcp) = &self.client.stream {
                    match tcp.poll_read_ready(cx) {
                        Poll::Pending => {
                            self.trim_idle();
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                if self.client.rbuf.capacity() < IDLE_READ {
                    self.client.rbuf.reserve(IDLE_READ);
                }
            } else {
                reserve_for(&mut self.client.rbuf, 0);
            }
            match poll_read_buf(Pin::new(&mut self.client.stream), cx, &mut self.client.rbuf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Idle::Gone),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    self.trim_idle();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Gives back the buffers of a session waiting for its client's next request.
    fn trim_idle(&mut self) {
        if self.client.rbuf.is_empty() {
            self.client.rbuf = BytesMut::new();
        }
        if self.client.wbuf.is_empty() {
            self.client.wbuf = BytesMut::new();
        }
        if self.proto.to_server.is_empty() {
            self.proto.to_server = BytesMut::new();
        }
    }

    pub(super) fn poll_attached(&mut self, cx: &mut TaskContext<'_>) -> Poll<Attached> {
        self.cancel.slot.kill_waker.register(cx.waker());
        if self.cancel.slot.is_killed() {
            // KILL: as if the client left (its transaction is rolled back, the server cleaned).
            return Poll::Ready(Attached::ClientGone);
        }
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
                // Bounded both ways: a client pipelining faster than its server answers waits.
                if p.to_server.len() < HIGH_WATER && self.client.rbuf.len() < HIGH_WATER.max(p.cneed) {
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
            match poll_out(&mut server.stream, cx, &mut p.to_server, &mut self.sflush, None) {
                Err(()) => {
                    server.broken = true;
                    // A replica that went away before the request reached it: run it elsewhere.
                    if p.retry_on_loss() {
                        return Poll::Ready(Attached::Retry(RetryCause::MemberLost));
                    }
                    return Poll::Ready(Attached::ServerGone);
                }
                Ok(moved) => progress |= moved,
            }

            // server → proxy → client
            let mut server_eof = false;
            // Bounded both ways here too: what the client has not taken yet stays in the
            // server's socket (its send blocks), not in the proxy.
            if self.client.wbuf.len() < HIGH_WATER && server.rbuf.len() < HIGH_WATER.max(p.sneed) {
                reserve_for(&mut server.rbuf, p.sneed);
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.rbuf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => server_eof = true,
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        self.heard = true;
                    }
                    Poll::Pending => {}
                }
            }
            match p.forward_server(server, &mut self.client.wbuf, &mut self.params) {
                Err(e) => return Poll::Ready(Attached::Bad(e)),
                Ok(need) => p.sneed = need,
            }
            if p.cstate.due.is_some() {
                return Poll::Ready(Attached::Invalidate);
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
                    self.ctx.metrics.proxy.pinned(&p.state.pins.reasons());
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
            // A replica read's answer is held until it is complete (see `retry`).
            let writable = p.writable(self.client.wbuf.len());
            match poll_out(&mut self.client.stream, cx, &mut self.client.wbuf, &mut self.cflush, writable) {
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
