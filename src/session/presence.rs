//! What a session reports of itself while it runs: its state (idle, waiting for a server,
//! holding one) in `pgweir_client_connections`, in its pool's client counts (SHOW POOLS) and in
//! its cancel slot (SHOW CLIENTS); and whether a draining shutdown must wait for it (`busy`).

use super::relay::Session;
use crate::metrics::proxy::ClientState;
use crate::pool::ServerPool;

impl Session<'_> {
    /// For `pgweir_client_connections`.
    pub(super) fn set_state(&mut self, to: Option<ClientState>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.state == to {
            return;
        }
        fn counter(p: &ServerPool, s: ClientState) -> &std::sync::atomic::AtomicI64 {
            match s {
                ClientState::Waiting => &p.clients_waiting,
                ClientState::Idle | ClientState::Active => &p.clients_active,
            }
        }
        if let (Some(s), Some(p)) = (self.state, self.state_pool.take()) {
            counter(&p, s).fetch_sub(1, Relaxed);
        }
        self.ctx.metrics.proxy.client(self.state, to);
        self.state = to;
        let code = match to {
            Some(ClientState::Waiting) => 1,
            Some(ClientState::Active) => 2,
            _ => 0,
        };
        self.cancel.slot.state.store(code, Relaxed);
        if let Some(s) = to {
            let p = self.login.pool.clone();
            counter(&p, s).fetch_add(1, Relaxed);
            self.state_pool = Some(p);
        }
        self.sync_busy();
    }

    /// Keeps `control.busy` (what a draining shutdown waits for) in line with this session.
    pub(super) fn sync_busy(&mut self) {
        let want = self.state == Some(ClientState::Active) || self.deferred_begin.is_some();
        if want == self.counted_busy {
            return;
        }
        let control = &self.ctx.control;
        if want {
            control.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        } else {
            control.busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            control.idle.notify_waiters();
        }
        self.counted_busy = want;
    }
}
