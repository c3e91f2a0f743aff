//! The statements one server connection holds, bounded: least recently used ones are closed to
//! make room, except those the current client has touched since checkout (an open portal may
//! depend on them).

use std::collections::HashSet;
use std::sync::Arc;

use lru::LruCache;

pub struct PreparedCache {
    lru: LruCache<Arc<str>, ()>,
    cap: usize,
    touched: HashSet<Arc<str>>,
    /// The pool's invalidation epoch this cache has caught up with.
    pub epoch: u64,
}

impl PreparedCache {
    pub fn new(cap: usize) -> PreparedCache {
        PreparedCache { lru: LruCache::unbounded(), cap: cap.max(1), touched: HashSet::new(), epoch: 0 }
    }

    /// True if the server holds `g` (and marks it used).
    pub fn has(&mut self, g: &Arc<str>) -> bool {
        if self.lru.get(g).is_some() {
            self.touched.insert(g.clone());
            true
        } else {
            false
        }
    }

    /// Records that `g` is being prepared; returns statements to close to stay within bounds.
    pub fn insert(&mut self, g: Arc<str>) -> Vec<Arc<str>> {
        self.touched.insert(g.clone());
        self.lru.put(g, ());
        let mut evicted = Vec::new();
        let mut kept = Vec::new();
        while self.lru.len() + kept.len() > self.cap {
            let Some((victim, ())) = self.lru.pop_lru() else { break };
            if self.touched.contains(&victim) {
                kept.push(victim);
            } else {
                evicted.push(victim);
            }
        }
        // Touched statements go back, possibly over the bound until the client releases.
        for s in kept {
            self.lru.put(s, ());
        }
        evicted
    }

    /// True if the server holds `g` (without marking it used).
    pub fn contains(&self, g: &str) -> bool {
        self.lru.contains(g)
    }

    pub fn remove(&mut self, g: &str) {
        self.lru.pop(g);
    }

    /// Everything is gone on the server (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    /// The client gives the server back.
    pub fn release(&mut self) {
        self.touched.clear();
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn evicts_least_recently_used_untouched() {
        let mut c = PreparedCache::new(2);
        assert!(c.insert(g("a")).is_empty());
        assert!(c.insert(g("b")).is_empty());
        c.release();
        assert!(c.has(&g("a")));
        assert_eq!(c.insert(g("c")), vec![g("b")], "b is the least recently used and untouched");
        assert!(c.has(&g("a")) && c.has(&g("c")) && !c.has(&g("b")));
    }

    #[test]
    fn touched_statements_survive_until_release() {
        let mut c = PreparedCache::new(1);
        c.insert(g("a"));
        assert!(c.insert(g("b")).is_empty(), "a is in use in this checkout");
        assert_eq!(c.len(), 2);
        c.release();
        assert_eq!(c.insert(g("c")).len(), 2);
        assert_eq!(c.len(), 1);
    }
}
