//! The classification cache: a literal-stripping fingerprint of a statement's normalized token
//! sequence, and a bounded LRU of classifications keyed by it and confirmed by a full comparison
//! of that sequence, so texts that differ only in literal values are parsed once. Pure: no I/O;
//! it never returns another statement's classification on a fingerprint collision.

use std::num::NonZeroUsize;

use lru::LruCache;

use super::classify::{classify, classify_verdict, hint, Classification, Route};

/// Normalized keys longer than this are not cached (bounds the cache's memory per entry).
const MAX_CACHED_KEY: usize = 8 * 1024;

/// Appends the normalized token sequence: the hint, then each token with keywords lowercased
/// (the lexer folds words) and every string or number literal as one `?` (tag byte 0x82).
/// Injective on token sequences: punctuation is ASCII, the other tokens start with a tag byte
/// 0x80..=0x84, words and quoted identifiers end with 0xFF (never in UTF-8), parameters are 4 bytes.
fn normalize(sql: &str, out: &mut Vec<u8>) {
    normalize_with(sql, out, &mut Vec::new());
}

/// [`normalize`], leaving the literals' byte ranges in `literals`.
fn normalize_with(sql: &str, out: &mut Vec<u8>, literals: &mut Vec<(usize, usize)>) {
    out.push(match hint(sql) {
        None => 0,
        Some(Route::Primary) => 1,
        Some(Route::Replica) => 2,
    });
    super::lexer::normalize_into(sql, out, literals);
}

/// The classification cache's key: [`normalize`], then each literal's kind (number, each
/// quoting style, dollar quoting). Kinds matter to the grammar (`select 1 'x'` parses, `select
/// .5 5.5` does not), so a text is never answered with the classification of one whose literals
/// differ in kind; fingerprints leave kinds out.
fn classify_key(sql: &str, out: &mut Vec<u8>) {
    let mut literals = Vec::new();
    normalize_with(sql, out, &mut literals);
    out.push(0xFE);
    let kind = |&(start, _): &(usize, usize)| super::lexer::literal_at(sql, start).map_or(0, |(_, k)| k.min(100) as u8);
    out.extend(literals.iter().map(kind));
}

/// A fixed-seed 64-bit hash (stable across runs and processes, so fingerprints can appear in
/// config and logs): 8 bytes at a time, then a murmur3 finalizer.
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// A literal-stripping fingerprint: tokens with string/number literals replaced by `?`,
/// whitespace/comments dropped, keywords lowercased (hint comments are part of the key, since they
/// change the route). Two texts differing only in literal values share a fingerprint. Stable across
/// runs; not collision-free (the cache confirms by full comparison).
pub fn fingerprint(sql: &str) -> u64 {
    let mut key = Vec::with_capacity(sql.len() / 2 + 8);
    normalize(sql, &mut key);
    hash_key(&key)
}

/// [`fingerprint`] with the caller's buffers (no allocation once they have grown); the
/// literals' byte ranges are left in `literals`, in order.
pub fn fingerprint_into(sql: &str, key: &mut Vec<u8>, literals: &mut Vec<(usize, usize)>) -> u64 {
    key.clear();
    literals.clear();
    normalize_with(sql, key, literals);
    hash_key(key)
}

/// What may be shown of a statement without its values: its tokens with every string or
/// number literal as `?`, comments dropped, whitespace between tokens as one space, cut to
/// `max` bytes at a character boundary.
pub fn without_literals(sql: &str, max: usize) -> String {
    use super::lexer::Token;
    let mut out = String::with_capacity(sql.len().min(max));
    let mut prev_end = None;
    for t in super::lexer::tokenize(sql) {
        if prev_end.is_some_and(|e| e < t.start) {
            out.push(' ');
        }
        match t.token {
            Token::Str(_) | Token::Number(_) => out.push('?'),
            _ => out.push_str(&sql[t.start..t.end]),
        }
        prev_end = Some(t.end);
        if out.len() > max {
            break;
        }
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

struct Entry {
    key: Box<[u8]>,
    class: Classification,
}

/// Bounded cache of classifications keyed by fingerprint, confirmed by a full comparison of the
/// normalized token sequence (never returns another statement's classification on a fingerprint
/// collision). Unparseable statements and keys over 8 KiB are never cached; memory is bounded by
/// `capacity` × (8 KiB + a few words). A change of `extra_write_functions` between calls clears it.
pub struct ClassifyCache {
    /// `None` when created with capacity 0 (caching off).
    entries: Option<LruCache<u64, Entry>>,
    /// The write-function list the entries were computed with.
    extra: Vec<String>,
    /// Reused buffer for the normalized key.
    key: Vec<u8>,
    hash: fn(&[u8]) -> u64,
}

impl ClassifyCache {
    /// A cache of up to `capacity` statement shapes; 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        Self::with_hash(capacity, hash_key)
    }

    pub(crate) fn with_hash(capacity: usize, hash: fn(&[u8]) -> u64) -> Self {
        let entries = NonZeroUsize::new(capacity).map(LruCache::new);
        ClassifyCache { entries, extra: Vec::new(), key: Vec::with_capacity(256), hash }
    }

    /// [`classify`], answered from the cache when a text of the same shape was seen before.
    pub fn classify(&mut self, sql: &str, extra_write_functions: &[String]) -> Classification {
        let ClassifyCache { entries, extra, key, hash } = self;
        let Some(entries) = entries.as_mut() else { return classify(sql, extra_write_functions) };
        if extra.as_slice() != extra_write_functions {
            entries.clear();
            *extra = extra_write_functions.to_vec();
        }
        key.clear();
        classify_key(sql, key);
        let fp = hash(key);
        if let Some(entry) = entries.get(&fp) {
            if *entry.key == **key {
                return entry.class.clone();
            }
        }
        let (class, cacheable) = classify_verdict(sql, extra_write_functions);
        if cacheable && key.len() <= MAX_CACHED_KEY {
            entries.put(fp, Entry { key: key.as_slice().into(), class: class.clone() });
        }
        class
    }

    /// Number of cached statement shapes.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, LruCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_kinds_keep_their_own_classification() {
        // Found by the classifier property (src/props.rs): both are `select ? ?` to a
        // fingerprint, but only one parses.
        let mut cache = ClassifyCache::new(16);
        let (string, numbers) = ("select 1\n'x'", "select .5\n5.5");
        assert_eq!(cache.classify(string, &[]), classify(string, &[]));
        assert_eq!(cache.classify(numbers, &[]), classify(numbers, &[]));
        assert_ne!(classify(string, &[]), classify(numbers, &[]));
        assert_eq!(fingerprint(string), fingerprint(numbers), "fingerprints ignore literal kinds");
    }

    #[test]
    fn fingerprint_into_matches_fingerprint_and_reports_literals() {
        let (mut key, mut lits) = (Vec::new(), Vec::new());
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 42 AND n = 'x''y'";
        assert_eq!(fingerprint_into(sql, &mut key, &mut lits), fingerprint(sql));
        assert_eq!(lits.len(), 2);
        assert_eq!(without_literals(sql, 1000), "SELECT abalance FROM pgbench_accounts WHERE aid = ? AND n = ?");
        let other = "select abalance from pgbench_accounts where aid = 7 and n = 'z'";
        assert_eq!(fingerprint_into(other, &mut key, &mut lits), fingerprint(sql), "same shape, reused buffers");
        assert_ne!(fingerprint_into("/* pgweir: replica */ SELECT 1", &mut key, &mut lits), fingerprint("SELECT 1"));
    }

    #[test]
    fn without_literals_drops_values_and_comments_and_cuts_at_a_character_boundary() {
        let sql = "SELECT 'ééé', 'x' -- ünïcode";
        assert_eq!(without_literals(sql, 1000), "SELECT ?, ?");
        assert_eq!(without_literals(sql, 8), "SELECT ?");
        assert_eq!(
            without_literals("/* user=alice */ select  $1::int,\n  E'a\\'b', $$x$$ /* k=v */ from t", 1000),
            "select $1::int, ?, ? from t"
        );
        assert_eq!(without_literals("SELECT \"é\"", 9), "SELECT \"", "never splits a character");
    }
}
