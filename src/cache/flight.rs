//! Single-flight: while one session runs a missed query to fill an entry, others missing the
//! same key wait for it (up to a bound) instead of running the query too. In-process only; a
//! fleet shares fills through Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::key::Key;

#[derive(Default)]
pub struct Flights {
    running: Mutex<HashMap<Key, Arc<Notify>>>,
}

/// Held by the session filling `key`; dropping it (filled or not) wakes the waiters.
pub struct Ticket {
    flights: Arc<Flights>,
    key: Key,
    notify: Arc<Notify>,
}

impl Ticket {
    pub fn key(&self) -> &Key {
        &self.key
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.flights.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        self.notify.notify_waiters();
    }
}

pub enum Role {
    Leader(Ticket),
    /// Another session filled (or gave up on) the key while this one waited.
    Waited,
}

/// Becomes the filler of `key`, or waits up to `wait` for the current one to finish.
pub async fn join(flights: &Arc<Flights>, key: Key, wait: Duration) -> Role {
    let notify = {
        let mut g = flights.running.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(&key) {
            Some(n) => n.clone(),
            None => {
                let notify = Arc::new(Notify::new());
                g.insert(key, notify.clone());
                return Role::Leader(Ticket { flights: flights.clone(), key, notify });
            }
        }
    };
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    // The leader may have finished between our lookup and enable().
    let still =
        flights.running.lock().unwrap_or_else(|p| p.into_inner()).get(&key).is_some_and(|n| Arc::ptr_eq(n, &notify));
    if still {
        let _ = tokio::time::timeout(wait, notified).await;
    }
    Role::Waited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_and_waiters_wake_when_it_ends() {
        let f = Arc::new(Flights::default());
        let Role::Leader(t) = join(&f, [1; 32], Duration::from_secs(5)).await else { panic!("not leader") };
        let f2 = f.clone();
        let waiter =
            tokio::spawn(async move { matches!(join(&f2, [1; 32], Duration::from_secs(30)).await, Role::Waited) });
        // Another key has its own leader.
        assert!(matches!(join(&f, [2; 32], Duration::from_secs(5)).await, Role::Leader(_)));
        tokio::task::yield_now().await;
        drop(t);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap());
        assert!(matches!(join(&f, [1; 32], Duration::from_secs(5)).await, Role::Leader(_)));
    }
}
