//! What a session knows about the shapes of the simple queries it sends, so a statement seen
//! before with other literal values is not analysed again: the shape is recognised by its
//! skeleton (`route::skeleton`: the text between literals compared byte for byte, each literal
//! re-read by kind), far cheaper than lexing. Only facts that hold for every text of a shape
//! are kept (whether it may have session effects, may write, names a `pgweir.` setting, is one
//! statement; its fingerprint and literal-free text): none depends on a literal's value (a
//! `set_config` call, whose effect depends on its `is_local` literal, is never without effects).
//! Bounded: a few shapes per session, the least recently matched replaced.

use crate::cache::analyze::writes;
use crate::route::cache::{fingerprint_into, without_literals};
use crate::route::lexer::{contains_ci, split_statements};
use crate::route::session_sql::query_effects;
use crate::route::skeleton::Skeleton;

/// Shapes kept per session.
const KEPT: usize = 16;
/// Longer texts are analysed every time (they are rarely repeated shapes, and costly to hold).
const MAX_TEXT: usize = 2048;
/// Longest statement text shown (SHOW QUERIES, slow-query log).
pub const MAX_SHOWN: usize = 1000;

/// Facts about every text of one shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub fingerprint: u64,
    /// One statement, with no session effects at all (no SET, no pinning function...).
    pub no_effects: bool,
    /// Writes nothing the result cache tracks.
    pub no_writes: bool,
    /// `pgweir.` appears nowhere (so it cannot be the proxy's own SET/SHOW).
    pub no_pgweir: bool,
    /// The text without literals or comments.
    pub shown: std::sync::Arc<str>,
}

struct Known {
    skeleton: Skeleton,
    facts: Facts,
}

#[derive(Default)]
pub struct Shapes {
    known: Vec<Known>,
    /// The last text looked up and its facts (several parts of the session ask about the
    /// same message).
    last: Option<(Vec<u8>, Facts)>,
    key: Vec<u8>,
    literals: Vec<(usize, usize)>,
}

impl Shapes {
    /// The facts of `sql` (a simple Query's text), or None for texts too long to keep.
    pub fn facts(&mut self, sql: &str) -> Option<Facts> {
        if sql.len() > MAX_TEXT {
            return None;
        }
        if let Some((text, facts)) = &self.last {
            if text.as_slice() == sql.as_bytes() {
                return Some(facts.clone());
            }
        }
        let facts = match self.known.iter().position(|k| k.skeleton.matches(sql, &mut self.literals)) {
            Some(i) => {
                // Most recently matched first.
                let k = self.known.remove(i);
                let f = k.facts.clone();
                self.known.insert(0, k);
                f
            }
            None => {
                let facts = self.analyse(sql);
                if let Some(skeleton) = Skeleton::new(sql, &self.literals) {
                    if self.known.len() >= KEPT {
                        self.known.pop();
                    }
                    self.known.insert(0, Known { skeleton, facts: facts.clone() });
                }
                facts
            }
        };
        let mut text = self.last.take().map(|(t, _)| t).unwrap_or_default();
        text.clear();
        text.extend_from_slice(sql.as_bytes());
        self.last = Some((text, facts.clone()));
        Some(facts)
    }

    /// The full analysis, leaving the literals' ranges in `self.literals`.
    fn analyse(&mut self, sql: &str) -> Facts {
        let single = split_statements(sql).len() <= 1;
        // set_config's effect depends on its is_local literal: never a fact of the shape.
        let no_effects =
            single && !contains_ci(sql.as_bytes(), b"set_config") && query_effects(sql).iter().all(Vec::is_empty);
        let no_writes = writes(sql).is_none();
        let no_pgweir = !contains_ci(sql.as_bytes(), b"pgweir.");
        let shown = without_literals(sql, MAX_SHOWN).into();
        let fingerprint = fingerprint_into(sql, &mut self.key, &mut self.literals);
        Facts { fingerprint, no_effects, no_writes, no_pgweir, shown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_is_analysed_once_and_its_facts_hold_for_other_literals() {
        let mut s = Shapes::default();
        let a = s.facts("SELECT abalance FROM pgbench_accounts WHERE aid = 17;").unwrap();
        assert!(a.no_effects && a.no_writes && a.no_pgweir);
        assert_eq!(&*a.shown, "SELECT abalance FROM pgbench_accounts WHERE aid = ?;");
        let b = s.facts("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;").unwrap();
        assert_eq!(a, b, "same shape, other literal");
        assert_eq!(s.known.len(), 1);
        assert_eq!(
            b.fingerprint,
            crate::route::cache::fingerprint("select abalance from pgbench_accounts where aid = 5;")
        );
    }

    #[test]
    fn facts_that_depend_on_the_text_are_found() {
        let mut s = Shapes::default();
        assert!(!s.facts("SET search_path = 'a'").unwrap().no_effects);
        assert!(!s.facts("select 1; select 2").unwrap().no_effects, "two statements");
        assert!(!s.facts("select set_config('a.b', 'c', false)").unwrap().no_effects);
        // A local set_config has no effect, but one of the same shape with 'false' has.
        assert!(!s.facts("select set_config('search_path', 'a', 'true')").unwrap().no_effects);
        assert!(!s.facts("select set_config('search_path', 'evil', 'false')").unwrap().no_effects);
        assert!(!s.facts("UPDATE t SET v = 1 WHERE k = 2").unwrap().no_writes);
        assert!(!s.facts("SET pgweir.route = 'replica'").unwrap().no_pgweir);
        // A literal that looks like something else changes nothing of its shape.
        let q = s.facts("select 'insert into t; set x = 1'").unwrap();
        assert!(q.no_effects && q.no_writes, "{q:?}");
        assert!(s.facts(&"x".repeat(MAX_TEXT + 1)).is_none());
    }

    #[test]
    fn the_oldest_shape_goes_first() {
        let mut s = Shapes::default();
        for i in 0..KEPT + 3 {
            s.facts(&format!("select {i} from t{i}")).unwrap();
        }
        assert_eq!(s.known.len(), KEPT);
        let newest = s.facts(&format!("select 99 from t{}", KEPT + 2)).unwrap();
        assert_eq!(s.known.len(), KEPT, "matched, not added");
        assert_eq!(&*newest.shown, format!("select ? from t{}", KEPT + 2));
    }
}
