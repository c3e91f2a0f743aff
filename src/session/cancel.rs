//! Cancel keys: each client gets its own (pid, secret) from a CSPRNG; a CancelRequest for it is
//! forwarded to the server connection the client holds at that moment, or ends its wait in a
//! pool queue. A session does not give up its server while a forwarded cancel is in flight, so
//! a late cancel can never hit the next client's query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::{Notify, RwLock};

use crate::server::{cancel, CancelKey};

/// One client's cancel state.
#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<Arc<CancelKey>>>,
    /// Wakes a session waiting for a server.
    pub queued: Notify,
    /// Read-held while a cancel is forwarded; write-held to change the target.
    inflight: RwLock<()>,
    /// A forwarded cancel failed or timed out: it may still reach the server later.
    failed: AtomicBool,
    /// The client's facts for SHOW CLIENTS and KILL (set once logged in).
    pub info: Mutex<Option<super::control::ClientInfo>>,
    /// 0 idle, 1 waiting, 2 active (SHOW CLIENTS).
    pub state: std::sync::atomic::AtomicU8,
    /// KILL from the admin console: the session ends at its next look (it registers its
    /// waker here each time it waits).
    killed: AtomicBool,
    pub kill_waker: futures_util::task::AtomicWaker,
}

impl CancelSlot {
    /// Ends the session (KILL): wakes it wherever it waits.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill_waker.wake();
        self.queued.notify_waiters();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// The session now uses this server.
    pub fn attach(&self, key: Arc<CancelKey>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    /// The session gives its server back; waits for any cancel being forwarded to it. Returns
    /// true when a cancel for that server failed in flight: the server must then be closed, not
    /// pooled, since the cancel might still land on whoever gets it next.
    pub async fn detach(&self) -> bool {
        let _g = self.inflight.write().await;
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.failed.swap(false, Ordering::AcqRel)
    }

    async fn fire(&self) {
        let _g = self.inflight.read().await;
        let key = self.target.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match key {
            Some(k) => {
                if let Err(e) = cancel(&k, Duration::from_secs(5)).await {
                    tracing::warn!(error = %e, "forwarding a cancel request failed");
                    self.failed.store(true, Ordering::Release);
                }
            }
            None => self.queued.notify_waiters(),
        }
    }
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

/// Removes the key when the session ends.
pub struct CancelGuard<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.registry.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Every live client: its id (the BackendKeyData pid) and slot.
    pub fn clients(&self) -> Vec<(i32, Arc<CancelSlot>)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(i32, Arc<CancelSlot>)> = map.iter().map(|(pid, (_, s))| (*pid, s.clone())).collect();
        v.sort_by_key(|(pid, _)| *pid);
        v
    }

    /// Issues a fresh key: a positive pid unique among live clients and a random secret.
    pub fn register(&self) -> CancelGuard<'_> {
        let mut rng = rand::rng();
        let slot = Arc::new(CancelSlot::default());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid: i32 = rng.random_range(1..i32::MAX);
            if map.contains_key(&pid) {
                continue;
            }
            let secret: i32 = rng.random();
            map.insert(pid, (secret, slot.clone()));
            return CancelGuard { registry: self, pid, secret, slot };
        }
    }

    /// Handles a CancelRequest; unknown keys are ignored silently, as PostgreSQL does. True
    /// when the key was this registry's.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let slot = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some((s, slot)) if secret.len() == 4 && constant_eq(&s.to_be_bytes(), secret) => Some(slot.clone()),
                _ => None,
            }
        };
        match slot {
            Some(slot) => {
                slot.fire().await;
                true
            }
            None => false,
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_positive_unique_and_removed_on_drop() {
        let reg = CancelRegistry::default();
        let a = reg.register();
        let b = reg.register();
        assert!(a.pid > 0 && b.pid > 0);
        assert_ne!(a.pid, b.pid);
        let pid = a.pid;
        drop(a);
        assert!(!reg.map.lock().unwrap().contains_key(&pid));
    }

    #[tokio::test]
    async fn cancel_wakes_a_queued_client_only_with_the_right_secret() {
        let reg = CancelRegistry::default();
        let g = reg.register();
        let notified = g.slot.queued.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        reg.cancel(g.pid, &(g.secret.wrapping_add(1)).to_be_bytes()).await;
        assert!(tokio::time::timeout(Duration::from_millis(20), notified.as_mut()).await.is_err());
        reg.cancel(g.pid, &g.secret.to_be_bytes()).await;
        tokio::time::timeout(Duration::from_secs(1), notified).await.expect("woken by the cancel");
    }
}
