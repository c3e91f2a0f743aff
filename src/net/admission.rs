//! Admission at accept: how many client connections one IP address may hold at once
//! (`proxy.max_connections_per_address`), so one misbehaving host cannot take every slot of
//! `pool.max_client_connections` from the others. A permit is held for the connection's life.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Live connection counts per address.
pub struct PerAddress {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its address's slot.
pub struct AddressPermit {
    owner: Option<(Arc<PerAddress>, IpAddr)>,
}

impl PerAddress {
    /// `limit` 0 admits everyone.
    pub fn new(limit: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// A permit for one more connection from `ip`, or None when it already holds the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        if self.limit == 0 {
            return Some(AddressPermit { owner: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressPermit { owner: Some((self.clone(), ip)) })
    }

    /// Connections `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.owner.take() else { return };
        let mut counts = owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PerAddress;

    #[test]
    fn each_address_gets_its_own_limit_and_slots_come_back() {
        let limits = PerAddress::new(2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "a third from the same address");
        let _other = limits.admit(b).expect("another address is not affected");
        drop(first);
        assert_eq!(limits.held(a), 1);
        assert!(limits.admit(a).is_some(), "a closed connection frees its slot");
        let unlimited = PerAddress::new(0);
        let many: Vec<_> = (0..100).map(|_| unlimited.admit(a).unwrap()).collect();
        assert_eq!((many.len(), unlimited.held(a)), (100, 0));
    }
}
