//! A server lost under a client's requests: the answers the client is still owed (a class 08
//! error per request, 08007 when a COMMIT's outcome is unknown), and `pool.query_timeout`,
//! which declares a server lost when a request waits on it while it sends nothing for that long
//! (a network partition or a hung host looks like that: no error, no close, no bytes).

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;

use super::pump::Attached;
use super::relay::Session;
use super::routing::Member;
use crate::wire::backend::put_ready_for_query;
use crate::wire::{PgError, SqlState};

impl Session<'_> {
    /// Pumps both directions until the attached phase ends. With `pool.query_timeout`, a
    /// request outstanding on a server that sends nothing for that long ends it as lost: its
    /// client gets the class 08 answer, the server is cancelled (best effort) and closed. Time
    /// the server is idle, or waiting on the client (COPY FROM STDIN, a client not reading),
    /// does not count.
    pub(super) async fn attached(&mut self) -> Attached {
        let Some(limit) = self.ctx.config.pool.query_timeout else {
            return poll_fn(|cx| self.poll_attached(cx)).await;
        };
        let mut deadline = Box::pin(tokio::time::sleep(limit));
        let silent = poll_fn(|cx| {
            if let Poll::Ready(a) = self.poll_attached(cx) {
                return Poll::Ready(Some(a));
            }
            let waits_on_client = self.client.wbuf.len() >= super::proto::HIGH_WATER;
            if std::mem::take(&mut self.heard) || !self.proto.plan.awaits_server() || waits_on_client {
                deadline.as_mut().reset(tokio::time::Instant::now() + limit);
            }
            deadline.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match silent {
            Some(a) => a,
            None => self.server_silent(limit),
        }
    }

    fn server_silent(&mut self, limit: Duration) -> Attached {
        tracing::warn!(pool = %self.login.pool.name, ?limit, "server sent nothing for pool.query_timeout: closing it");
        if let Some(server) = self.server.as_mut() {
            server.broken = true;
            let (key, timeout) = (server.cancel_key.clone(), self.ctx.config.pool.connect_timeout);
            tokio::spawn(async move { crate::server::cancel(&key, timeout).await });
        }
        let why = format!("the server sent nothing for {limit:?} (pool.query_timeout)");
        self.proto.held_fatal = Some(why);
        Attached::ServerGone
    }

    /// The server died under the client's requests: each request still owed an answer gets a
    /// class 08 error and ReadyForQuery (08007 for a COMMIT, whose outcome is unknown); a batch
    /// the client has not finished yet is dropped up to its Sync.
    pub(super) fn answer_lost_requests(&mut self, member: Option<Member>) {
        // Nothing is held back any more: what the client got so far, then the errors.
        self.proto.capture = None;
        let plan = &self.proto.plan;
        // A write in flight outside a block commits as it ends: its outcome is unknown too.
        let autocommit_write = member == Some(Member::Primary) && self.proto.wrote && plan.status == b'I';
        let (code, what) = if plan.pending_commit() || autocommit_write {
            (SqlState("08007"), "the COMMIT's outcome is unknown: check before retrying")
        } else {
            (SqlState::CONNECTION_FAILURE, "the request (and its transaction, if any) did not complete")
        };
        let detail = self.proto.held_fatal.take().unwrap_or_else(|| "the server closed the connection".into());
        let err = PgError::error(code, format!("pgweir: lost the server connection: {what}")).with_detail(detail);
        for _ in 0..plan.pending_boundaries() {
            err.encode(&mut self.client.wbuf);
            put_ready_for_query(&mut self.client.wbuf, b'I');
        }
        if plan.batch_open() || self.proto.client_skip {
            if plan.pending_boundaries() == 0 {
                err.encode(&mut self.client.wbuf);
            }
            self.skip_to_sync = true;
        }
        self.proto.client_skip = false;
        self.proto.plan.reset(b'I');
        self.proto.to_server.clear();
    }
}
