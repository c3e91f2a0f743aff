//! Which server connections a pool holds open, for SHOW SERVERS: each connection registers a
//! slot when it is created and leaves the list when it is dropped. A slot's state changes with
//! plain atomic stores on checkout and return (no lock on the data path); the list's lock is
//! taken only when a connection opens or closes, and when the console reads it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What the console shows of one server connection.
pub struct ServerSlot {
    pub id: u64,
    /// The server's address as connected to, and the proxy's end of the socket.
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connected: SystemTime,
    pub remote_pid: i32,
    pub tls: bool,
    /// The client (its SHOW CLIENTS id) holding this connection; 0 while it is idle in its pool.
    client: AtomicI32,
    /// Unix seconds of the last checkout.
    request_time: AtomicU64,
    /// Prepared statements the connection held when last returned to its pool.
    prepared: AtomicU64,
}

impl ServerSlot {
    /// Checked out; held by the proxy itself (-1) until a client is linked.
    pub fn checked_out(&self) {
        self.client.store(-1, Relaxed);
        self.request_time.store(unix_now(), Relaxed);
    }

    /// Linked to the client that now holds it.
    pub fn link(&self, client: i32) {
        self.client.store(client, Relaxed);
    }

    /// Back in its pool, holding `prepared` statements.
    pub fn returned(&self, prepared: usize) {
        self.prepared.store(prepared as u64, Relaxed);
        self.client.store(0, Relaxed);
    }

    pub fn prepared(&self) -> u64 {
        self.prepared.load(Relaxed)
    }

    /// The holding client's id, -1 when checked out by the proxy itself, None when idle.
    pub fn holder(&self) -> Option<i32> {
        match self.client.load(Relaxed) {
            0 => None,
            c => Some(c),
        }
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Relaxed)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One pool's open server connections.
#[derive(Default)]
pub struct ServerList {
    map: Mutex<HashMap<u64, Arc<ServerSlot>>>,
    /// The pool was retired by RELOAD: connections close instead of going back to it.
    retired: std::sync::atomic::AtomicBool,
}

impl ServerList {
    /// Adds a connection; it leaves the list when the returned registration drops.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        remote_pid: i32,
        tls: bool,
    ) -> Registration {
        let now = SystemTime::now();
        let slot = Arc::new(ServerSlot {
            id,
            peer,
            local,
            connected: now,
            remote_pid,
            tls,
            client: AtomicI32::new(0),
            request_time: AtomicU64::new(unix_now()),
            prepared: AtomicU64::new(0),
        });
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        Registration { list: self.clone(), slot }
    }

    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Relaxed)
    }

    /// The open connections, oldest first.
    pub fn all(&self) -> Vec<Arc<ServerSlot>> {
        let mut v: Vec<_> = self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

/// A connection's place in its pool's list; dropping it removes the connection from the list.
pub struct Registration {
    pub list: Arc<ServerList>,
    pub slot: Arc<ServerSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.list.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.slot.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_list_when_dropped_and_report_their_holder() {
        let list = Arc::new(ServerList::default());
        let a = list.register(1, None, None, 10, false);
        let b = list.register(2, None, None, 11, true);
        assert_eq!(list.all().iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(a.slot.holder(), None);
        a.slot.checked_out();
        assert_eq!(a.slot.holder(), Some(-1), "checked out before a client is linked");
        a.slot.link(42);
        assert_eq!(a.slot.holder(), Some(42));
        a.slot.returned(3);
        assert_eq!((a.slot.holder(), a.slot.prepared()), (None, 3));
        drop(b);
        assert_eq!(list.all().iter().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
    }
}
