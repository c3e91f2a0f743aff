//! The session loop. Idle (no server): read the client until a request starts. Attached: pump
//! both directions at once (client → server and server → client are polled together, so a big
//! pipeline or COPY never deadlocks), forwarding frames as raw bytes and looking only at the
//! tags that mark request and transaction boundaries. In transaction mode the server goes back
//! to the pool when ReadyForQuery says idle and no request is outstanding.

use std::future::poll_fn;

use super::cached::CacheStep;
use super::cancel::CancelGuard;
use super::params::ClientParams;
use super::proto::{protocol, Proto, STREAM_ABOVE};
use super::pump::{Attached, Idle};
use super::retry::RetryCause;
use super::routing::Member;
use super::sharded::ShardStep;
use super::stmts::ClientStatements;
use super::welcome::{Welcome, WelcomeKey};
use super::{ClientConn, Context, Login};
use crate::config::PoolMode;
use crate::metrics::proxy::{ClientState, RouteLabel};
use crate::pool::{discard, Pooled, ServerPool};
use crate::server::ClientFacing;
use crate::wire::backend::{put_backend_key_data, put_parameter_status, put_ready_for_query};
use crate::wire::{PgError, SqlState};
use std::sync::Arc;

pub(super) struct Session<'a> {
    pub(super) ctx: &'a Context,
    pub(super) client: ClientConn,
    pub(super) login: Login,
    pub(super) cancel: CancelGuard<'a>,
    pub(super) server: Option<Pooled>,
    pub(super) params: ClientParams,
    pub(super) proto: Proto,
    pub(super) cflush: bool,
    pub(super) sflush: bool,
    /// After a refused request (no server): drop its messages up to Sync.
    pub(super) skip_to_sync: bool,
    /// The client sent Terminate while attached: finish what it already sent, then leave.
    pub(super) terminating: bool,
    /// The server sent bytes since `pool.query_timeout`'s deadline was last moved.
    pub(super) heard: bool,
    /// This session counts in its pool's pinned clients.
    pub(super) counted_pin: bool,
    /// The member and pool of the attached server.
    member: Option<Member>,
    current_pool: Option<Arc<ServerPool>>,
    /// Read-your-writes: the primary's WAL position after this session's last write.
    pub(super) min_lsn: u64,
    /// `SET pgweir.route`: None is automatic.
    pub(super) route_override: Option<crate::route::classify::Route>,
    /// The next request runs on the primary (a replica refused it as a write); also set once a
    /// request has been retried, so it is not retried twice.
    retry_primary: bool,
    retried: bool,
    /// A BEGIN answered by the proxy, to send ahead of the transaction's first statement.
    pub(super) deferred_begin: Option<String>,
    /// The request being routed only prepares and describes statements (sharded databases).
    pub(super) parse_only: bool,
    /// For `pgweir_client_connections` (None until logged in), and the pool it is counted in
    /// (SHOW POOLS).
    pub(super) state: Option<ClientState>,
    pub(super) state_pool: Option<Arc<ServerPool>>,
    /// Counted in `control.busy` (holding a server, or inside a deferred BEGIN).
    pub(super) counted_busy: bool,
    /// When the attached server was checked out.
    attached_at: std::time::Instant,
    /// RELOAD retired this login's pools but it could not move (it keeps them until it ends).
    pub(super) kept_old_pools: bool,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.deferred_begin = None;
        self.set_state(None);
        if self.counted_pin {
            self.login.pool.unpin();
        }
        if let Some(m) = self.member.take() {
            self.count_outstanding(m, -1);
        }
        self.settle_writes_later();
    }
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

impl<'a> Session<'a> {
    pub fn new(ctx: &'a Context, client: ClientConn, login: Login, cancel: CancelGuard<'a>) -> Session<'a> {
        let cfg = &ctx.config;
        let rewrite = login.mode == PoolMode::Transaction;
        let stmts = ClientStatements::new(cfg.prepared.max_per_client, cfg.prepared.max_bytes_per_client);
        Session {
            ctx,
            client,
            login,
            cancel,
            server: None,
            params: ClientParams::default(),
            proto: {
                let mut p = Proto::new(cfg.max_message_size, rewrite, stmts);
                p.cache = ctx.cache.clone();
                p.metrics = Some(ctx.metrics.clone());
                p.timing = super::timing::Timing::new(Some(ctx.metrics.clone()), cfg.slow_query);
                p
            },
            cflush: false,
            sflush: false,
            skip_to_sync: false,
            terminating: false,
            heard: false,
            counted_pin: false,
            member: None,
            current_pool: None,
            min_lsn: 0,
            route_override: None,
            retry_primary: false,
            retried: false,
            deferred_begin: None,
            parse_only: false,
            state: None,
            state_pool: None,
            counted_busy: false,
            attached_at: std::time::Instant::now(),
            kept_old_pools: false,
        }
    }

    pub async fn run(&mut self) {
        // Boxed awaits below: their futures are large and live only while they run, and a
        // session's idle footprint is the largest of them (memory per idle client).
        if let Err(e) = Box::pin(self.start()).await {
            let code = match &e {
                crate::server::ClientFacing::Error(pe) => Some(pe.code.0.to_string()),
                // The server's own ErrorResponse: its SQLSTATE field.
                crate::server::ClientFacing::Raw(raw) => {
                    crate::wire::backend::ErrorFields::parse(raw.get(5..).unwrap_or_default()).code
                }
            };
            self.ctx.metrics.proxy.error(code.as_deref());
            e.encode(&mut self.client.wbuf);
            let _ = self.client.flush().await;
            return;
        }
        self.set_state(Some(if self.server.is_some() { ClientState::Active } else { ClientState::Idle }));
        loop {
            if self.server.is_none() {
                match poll_fn(|cx| self.poll_idle(cx)).await {
                    Idle::Request => {
                        let started = std::time::Instant::now();
                        if let Err(e) = self.between_transactions() {
                            return self.client.fatal(e).await;
                        }
                        let answered = self.answer_proxy_statement() || self.defer_begin();
                        self.sync_busy();
                        if answered {
                            continue;
                        }
                        if self.login.shards.is_some() {
                            match Box::pin(self.shard_request()).await {
                                ShardStep::Go => {}
                                ShardStep::Done => continue,
                                ShardStep::Gone => return,
                            }
                        }
                        let step = if self.ctx.cache.is_some() {
                            Box::pin(self.cache_request()).await
                        } else {
                            CacheStep::Pass
                        };
                        let fill = match step {
                            CacheStep::Answered => {
                                self.ctx.metrics.proxy.answered(RouteLabel::Cache, started.elapsed().as_secs_f64());
                                continue;
                            }
                            CacheStep::Fill(f) => Some(*f),
                            CacheStep::Pass => None,
                        };
                        let split = self.login.topology.as_ref().map(|_| self.ctx);
                        if self.proto.rewrite && self.proto.prepare_locally(&mut self.client, &self.params, split) {
                            continue;
                        }
                        let (mut member, may_write) = self.choose_member();
                        self.proto.wrote = may_write;
                        let retrying = std::mem::take(&mut self.retried);
                        if std::mem::take(&mut self.retry_primary) {
                            member = Member::Primary;
                            self.proto.wrote = true;
                        }
                        if self.deferred_begin_needs_primary() {
                            member = Member::Primary;
                        }
                        if fill.is_some() && self.login.topology.is_some() {
                            // Fills come from the primary: never older than the last
                            // invalidating write, whatever the replicas' lag.
                            member = Member::Primary;
                        }
                        if let Err(e) = self.acquire(member).await {
                            self.refuse_request(e);
                            continue;
                        }
                        self.proto.cstate.fill = fill;
                        self.proto.shard_check = self.shard_check();
                        let deferred = self.deferred_begin.is_some();
                        if let Some(m) = self.member {
                            // A replay would lose the BEGIN sent ahead of it: no retry then.
                            self.arm_retry(m, retrying || deferred);
                        }
                        if self.parse_only && self.deferred_begin.is_some() {
                            // Only statements are described: the transaction starts with the
                            // first one that runs, wherever it is routed.
                            self.proto.begin_pending = true;
                        } else {
                            self.send_deferred_begin();
                        }
                        self.sync_busy();
                    }
                    Idle::Terminate | Idle::Gone => return,
                    Idle::Bad(e) => return self.client.fatal(e).await,
                }
            }
            self.proto.may_pin = self.counted_pin || self.login.pool.may_pin();
            match self.attached().await {
                Attached::Release => self.release().await,
                Attached::Invalidate => Box::pin(self.invalidate_due()).await,
                Attached::ClientGone | Attached::Terminate => return Box::pin(self.finish_server()).await,
                Attached::Retry(cause) => {
                    self.proto.timing.abandon();
                    self.set_state(Some(ClientState::Idle));
                    let member = self.member;
                    self.detach_member();
                    if let Some(s) = self.server.take() {
                        discard(s);
                    }
                    self.cancel.slot.detach().await;
                    if let (Some(Member::Replica(i)), RetryCause::MemberLost) = (member, cause) {
                        self.ban_replica(i, "failed during a read");
                    }
                    // Put the request back in front of whatever else the client sent; nothing
                    // meant for the failed server goes to the next one.
                    self.proto.to_server.clear();
                    // The failed member's answer, held back, never reaches the client.
                    self.client.wbuf.truncate(self.proto.hold);
                    let mut again = self.proto.capture.take().unwrap_or_default();
                    again.extend_from_slice(&self.client.rbuf);
                    self.client.rbuf = again;
                    self.proto.csplit = crate::wire::Splitter::new(self.ctx.config.max_message_size, STREAM_ABOVE);
                    self.retry_primary = cause == RetryCause::NeedsPrimary;
                    self.retried = true;
                    tracing::debug!(?cause, "running a read again elsewhere");
                }
                Attached::ServerGone => {
                    self.proto.timing.abandon();
                    self.set_state(Some(ClientState::Idle));
                    self.settle_writes_later();
                    self.proto.cstate.fill = None;
                    let member = self.member;
                    self.detach_member();
                    if let Some(s) = self.server.take() {
                        discard(s);
                    }
                    self.cancel.slot.detach().await;
                    if self.login.mode == PoolMode::Transaction && !self.proto.state.pins.any() {
                        // The client keeps its connection: its request fails with a class 08
                        // error and the next one gets another server (after a failover, the
                        // new primary).
                        self.answer_lost_requests(member);
                        continue;
                    }
                    if !self.proto.server_fatal {
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
                    self.detach_member();
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
                    let pool = self.write_pool();
                    self.attach(server, pool, Member::Primary);
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
        let pool = self.write_pool();
        let mut server = pool.checkout().await.map_err(|e| match e {
            crate::pool::CheckoutError::Server(s) => s.client_error(),
            other => {
                let mut pe = other.to_pg();
                pe.severity = crate::wire::error::Severity::Fatal;
                ClientFacing::Error(pe)
            }
        })?;
        self.params = ClientParams::new(pool.defaults(), &self.login.settings).with_key(self.ctx.settings_key.clone());
        match super::params::sync(&self.params, &mut server).await {
            Ok(None) => {}
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
        self.params.adopt_reported(&server.params);
        server.synced = self.params.shape();
        Ok(server)
    }

    fn attach(&mut self, mut server: Pooled, pool: Arc<ServerPool>, member: Member) {
        server.link(self.cancel.pid);
        self.proto.attach(server.status);
        self.attached_at = std::time::Instant::now();
        self.proto.on_replica = matches!(member, Member::Replica(_));
        self.sflush = false;
        self.count_outstanding(member, 1);
        self.member = Some(member);
        // Statements another session found stale: close them here before anything else runs.
        let (stale, epoch) = pool.stale_since(server.prepared.epoch);
        self.current_pool = Some(pool);
        server.prepared.epoch = epoch;
        for g in stale {
            if server.prepared.contains(&g) {
                server.prepared.remove(&g);
                self.proto.close_on_server(&g);
            }
        }
        self.server = Some(server);
    }

    /// Checks a server out for the request at the front of the client's buffer (or gives up
    /// when the client cancels or the wait times out) and brings its settings in line.
    async fn acquire(&mut self, member: Member) -> Result<(), PgError> {
        self.set_state(Some(ClientState::Waiting));
        if self.ctx.control.is_paused(&self.login.database) {
            // PAUSE: new transactions wait for RESUME (a cancel ends the wait).
            let slot = self.cancel.slot.clone();
            let notified = slot.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            tokio::select! {
                _ = self.ctx.control.wait_resumed(&self.login.database) => {}
                _ = notified => {
                    self.set_state(Some(ClientState::Idle));
                    return Err(PgError::error(SqlState::QUERY_CANCELED, "canceling statement due to user request"));
                }
            }
        }
        let r = self.acquire_member(member).await;
        self.set_state(Some(if r.is_ok() { ClientState::Active } else { ClientState::Idle }));
        r
    }

    async fn acquire_member(&mut self, mut member: Member) -> Result<(), PgError> {
        let slot = self.cancel.slot.clone();
        let (mut server, pool) = loop {
            let primary_now =
                self.login.topology.as_ref().map(|t| t.primary_member.load(std::sync::atomic::Ordering::Relaxed));
            let pool = match member {
                Member::Primary => self.write_pool(),
                Member::Replica(i) => self.login.replicas[i].clone(),
                Member::Nowhere => {
                    return Err(PgError::error(
                        SqlState::CONNECTION_EXCEPTION,
                        "pgweir: no replica can serve this read now, and routing.primary_reads = never",
                    ))
                }
            };
            let wait_start = std::time::Instant::now();
            // Most checkouts find a connection at once; only a real wait listens for a cancel.
            let (got, waited) = match pool.try_checkout() {
                Some(s) => (Ok(s), false),
                None => {
                    let notified = slot.queued.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let r = tokio::select! {
                        r = Box::pin(pool.checkout()) => r,
                        _ = notified => return Err(PgError::error(SqlState::QUERY_CANCELED, "canceling statement due to user request")),
                    };
                    (r, true)
                }
            };
            let m = &self.ctx.metrics.proxy;
            let waited_for = wait_start.elapsed();
            self.proto.timing.waited(waited_for);
            m.pool_wait_seconds.observe(waited_for.as_secs_f64());
            pool.stats.wait_us.fetch_add(waited_for.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
            if waited {
                m.pool_waits.inc();
            }
            match (got, member) {
                (Ok(s), _) => break (s, pool),
                // A replica that cannot be reached: take it out of rotation at once (the monitor
                // puts it back when it answers) and run the read elsewhere.
                (Err(crate::pool::CheckoutError::Server(e)), Member::Replica(i)) => {
                    self.ban_replica(i, &e.to_string());
                    member = self.choose_member().0;
                }
                // The primary is gone: hold the write while the monitor looks for a promoted
                // member, then use it.
                (Err(crate::pool::CheckoutError::Server(e)), Member::Primary)
                    if e.is_transient() && primary_now.is_some() =>
                {
                    if !Box::pin(self.wait_for_failover(primary_now.unwrap_or(0))).await {
                        return Err(PgError::error(SqlState::CONNECTION_FAILURE, format!("pgweir: {e}"))
                            .with_detail("no promoted primary appeared within routing.failover_timeout"));
                    }
                }
                (Err(e), _) => return Err(e.to_pg()),
            }
        };
        match super::params::sync(&self.params, &mut server).await {
            Ok(None) => {}
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
        self.cancel.slot.attach(server.cancel_key.clone());
        self.attach(server, pool, member);
        Ok(())
    }

    /// Keeps a replica read's messages so it can run elsewhere if the replica fails before
    /// answering (once per request).
    fn arm_retry(&mut self, member: Member, retrying: bool) {
        if matches!(member, Member::Replica(_)) && !retrying {
            self.proto.start_capture(self.client.wbuf.len());
        } else {
            self.proto.capture = None;
        }
    }

    /// Leaves the current member: load count, and the pool that invalidated statements go to.
    fn detach_member(&mut self) {
        if let Some(m) = self.member.take() {
            self.count_outstanding(m, -1);
        }
        let pool = self.current_pool.take().unwrap_or_else(|| self.login.pool.clone());
        for g in self.proto.invalidated.drain(..) {
            pool.invalidate(g);
        }
    }

    async fn release(&mut self) {
        if self.member == Some(Member::Primary) && self.proto.wrote {
            self.record_write_position().await;
        }
        let route =
            if matches!(self.member, Some(Member::Replica(_))) { RouteLabel::Replica } else { RouteLabel::Primary };
        let queries = std::mem::take(&mut self.proto.queries);
        let held = self.attached_at.elapsed();
        self.ctx.metrics.proxy.released(route, held.as_secs_f64(), queries);
        if let Some(p) = &self.current_pool {
            use std::sync::atomic::Ordering::Relaxed;
            p.stats.xacts.fetch_add(1, Relaxed);
            p.stats.queries.fetch_add(queries, Relaxed);
            p.stats.xact_us.fetch_add(held.as_micros() as u64, Relaxed);
        }
        self.set_state(Some(ClientState::Idle));
        self.proto.wrote = false;
        let tainted = self.cancel.slot.detach().await;
        self.detach_member();
        if let Some(mut server) = self.server.take() {
            server.prepared.release();
            if tainted {
                // A cancel for this server may still arrive late: it must not hit someone else.
                discard(server);
            }
        }
    }

    /// The client left while holding a server: make the server clean or close it.
    async fn finish_server(&mut self) {
        self.detach_member();
        let Some(mut server) = self.server.take() else { return };
        let tainted = self.cancel.slot.detach().await;
        server.prepared.release();
        // Unsynced extended messages hold an implicit transaction that a Sync would commit:
        // closing rolls it back, as PostgreSQL does when its client vanishes.
        let quiet = self.proto.quiet() && !self.proto.plan.batch_open();
        let pins = &self.proto.state.pins;
        let mut clean = quiet && !tainted && !pins.poisons_server() && server.rollback_if_needed().await;
        // Session state (session mode, or a pinned client in transaction mode) is wiped before
        // anyone else gets the server.
        if clean && (self.login.mode == PoolMode::Session || pins.any()) {
            clean = matches!(server.run_control("DISCARD ALL").await, Ok(None));
            server.applied.clear();
            server.prepared.clear();
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
    pub(super) fn refuse_request(&mut self, err: PgError) {
        self.ctx.metrics.proxy.error(Some(err.code.0));
        err.encode(&mut self.client.wbuf);
        self.skip_to_sync = true;
    }
}
