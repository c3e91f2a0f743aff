//! A statement's skeleton: its text with the literals cut out. Another text has the same
//! token sequence up to literal values exactly when it is the same segments around literals of
//! the same kinds, which a few `memcmp`s and one lexer step per literal can check: far cheaper
//! than tokenizing it again. Pure: no I/O.

use super::lexer::literal_at;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skeleton {
    /// The text between literals (one more segment than literals).
    segments: Vec<Box<[u8]>>,
    /// Each literal's kind code (`lexer::literal_at`).
    kinds: Vec<u32>,
}

impl Skeleton {
    /// The skeleton of `sql`, whose literals are at `literals` (byte ranges, in order, as
    /// `lexer::normalize_into` reports them). None if a literal's kind cannot be re-read.
    pub fn new(sql: &str, literals: &[(usize, usize)]) -> Option<Skeleton> {
        let b = sql.as_bytes();
        let mut segments = Vec::with_capacity(literals.len() + 1);
        let mut kinds = Vec::with_capacity(literals.len());
        let mut at = 0;
        for &(start, end) in literals {
            let (e, kind) = literal_at(sql, start)?;
            if e != end || start < at {
                return None;
            }
            segments.push(b[at..start].into());
            kinds.push(kind);
            at = end;
        }
        segments.push(b[at..].into());
        Some(Skeleton { segments, kinds })
    }

    /// Does `sql` have this skeleton? Its literals' byte ranges go to `out`.
    pub fn matches(&self, sql: &str, out: &mut Vec<(usize, usize)>) -> bool {
        out.clear();
        let b = sql.as_bytes();
        let mut at = 0;
        for (seg, &kind) in self.segments.iter().zip(&self.kinds) {
            if !b[at..].starts_with(seg) {
                return false;
            }
            at += seg.len();
            match literal_at(sql, at) {
                Some((end, k)) if k == kind => {
                    out.push((at, end));
                    at = end;
                }
                _ => return false,
            }
        }
        self.segments.last().is_some_and(|last| b[at..] == **last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::lexer::normalize_into;

    fn skeleton(sql: &str) -> Skeleton {
        let (mut key, mut lits) = (Vec::new(), Vec::new());
        normalize_into(sql, &mut key, &mut lits);
        Skeleton::new(sql, &lits).unwrap()
    }

    fn key(sql: &str) -> Vec<u8> {
        let (mut key, mut lits) = (Vec::new(), Vec::new());
        normalize_into(sql, &mut key, &mut lits);
        key
    }

    #[test]
    fn same_shape_other_literals_match() {
        let s = skeleton("SELECT v FROM t WHERE id = 42 AND name = 'x''y';");
        let mut lits = Vec::new();
        let other = "SELECT v FROM t WHERE id = 123456 AND name = 'it''s longer';";
        assert!(s.matches(other, &mut lits));
        assert_eq!(&other[lits[0].0..lits[0].1], "123456");
        assert_eq!(&other[lits[1].0..lits[1].1], "'it''s longer'");
    }

    #[test]
    fn a_match_means_the_same_token_sequence() {
        let base = "SELECT v FROM t WHERE id = 42 AND name = 'x'";
        let s = skeleton(base);
        let mut lits = Vec::new();
        for other in [
            "SELECT v FROM t WHERE id = 42 AND name = E'x'",
            "SELECT v FROM t WHERE id = 42 AND name = 'x' ",
            "SELECT v FROM t WHERE id = 4.2e AND name = 'x'",
            "SELECT v FROM t WHERE id = 42x AND name = 'x'",
            "SELECT v FROM t WHERE id = $1 AND name = 'x'",
            "SELECT v FROM t WHERE id = 42 AND name = 'x",
            "SELECT v FROM t WHERE id = '42' AND name = 'x'",
            "SELECT v FROM t WHERE id = 42 AND name = $$x$$",
        ] {
            // Either it does not match, or it tokenizes the same way.
            if s.matches(other, &mut lits) {
                assert_eq!(key(other), key(base), "{other}");
            }
        }
        assert!(s.matches("SELECT v FROM t WHERE id = 7 AND name = ''", &mut lits));
        assert!(!s.matches("SELECT v FROM t WHERE id = 7 AND name = 'x' OR 1 = 1", &mut lits));
    }
}
