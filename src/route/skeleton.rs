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
            // A digit right after a name's last character would continue the name (`a.5` has
            // the number `.5`; `a5` is one word): never the same tokens.
            if at > 0 && b.get(at).is_some_and(u8::is_ascii_digit) && is_name_byte(b[at - 1]) {
                return false;
            }
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

/// Bytes that continue an unquoted name (letters, digits, `_`, `$`, and anything non-ASCII).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::lexer::normalize_into;

    #[test]
    fn a_digit_that_would_continue_a_name_does_not_match() {
        let s = skeleton("select a.5");
        let mut lits = Vec::new();
        assert!(s.matches("select a.75", &mut lits));
        assert!(!s.matches("select a5", &mut lits), "a5 is one word, not a and .5");
        assert_ne!(key("select a5"), key("select a.5"));
    }

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
