//! Routing decisions by statement shape, so a point statement pays for sqlparser once per
//! shape instead of once per execution (pgbench and ORMs send literals in the text). The key is
//! the classifier's normalized token sequence (literals as `?`), confirmed by full comparison. A
//! shape is cached when its decision used no constant (it is the same for every literal), or
//! exactly one literal or parameter that picked one shard: the cached plan reads that literal
//! (by position) or parameter again and hashes it. Anything else is routed in full each time.
//! Pure: no I/O.

use std::num::NonZeroUsize;

use lru::LruCache;

use super::route::{route_explained, Ask, Decision, RouteError, Used};
use super::Layout;
use crate::route::cache::hash_key;
use crate::route::lexer::{normalize_into, tokenize, Token};
use crate::route::skeleton::Skeleton;

/// Shapes kept per session.
pub const CAPACITY: usize = 64;
/// Longer normalized texts are not cached.
const MAX_KEY: usize = 4096;

#[derive(Clone, Debug)]
enum Plan {
    Fixed(Decision),
    /// The key is the `index`-th literal of the text.
    Literal {
        index: usize,
        table: usize,
    },
    Param {
        n: usize,
        table: usize,
    },
}

struct Entry {
    key: Box<[u8]>,
    plan: Plan,
    /// To recognise the shape without tokenizing (see `route::skeleton`).
    skeleton: Option<Skeleton>,
}

/// Shapes tried by skeleton before the text is tokenized.
const RECENT: usize = 4;

/// A bounded cache of routing plans (one per session: no locking).
pub struct RouteCache {
    entries: LruCache<u64, Entry>,
    key: Vec<u8>,
    /// Byte ranges of the literals of the text being routed.
    literals: Vec<(usize, usize)>,
    /// Fingerprints of the shapes used last, newest first.
    recent: Vec<u64>,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            entries: LruCache::new(NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN)),
            key: Vec::new(),
            literals: Vec::new(),
            recent: Vec::with_capacity(RECENT),
        }
    }
}

/// The value of the literal at `sql[start..end]` (a number as written, a string decoded).
fn literal(sql: &str, (start, end): (usize, usize)) -> Option<String> {
    let text = sql.get(start..end)?;
    match tokenize(text).into_iter().next()?.token {
        Token::Str(s) => Some(s),
        Token::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl RouteCache {
    /// [`super::route::route`], from the cache when the shape allows.
    pub fn route(&mut self, layout: &Layout, sql: &str, ask: Ask<'_>) -> Result<Decision, RouteError> {
        if ask.session_key.is_some() || sql.trim_start().starts_with("/*") || sql.trim_start().starts_with("--") {
            return super::route::route(layout, sql, ask);
        }
        // A recent shape, recognised by its skeleton: no tokenizing.
        let mut hit = None;
        for &fp in &self.recent {
            let matched = self
                .entries
                .peek(&fp)
                .and_then(|e| e.skeleton.as_ref())
                .is_some_and(|s| s.matches(sql, &mut self.literals));
            if matched {
                hit = Some(fp);
                break;
            }
        }
        let fp = match hit {
            Some(fp) => fp,
            None => {
                self.key.clear();
                self.literals.clear();
                normalize_into(sql, &mut self.key, &mut self.literals);
                hash_key(&self.key)
            }
        };
        let found = self.entries.get(&fp).filter(|e| hit.is_some() || *e.key == *self.key);
        if let Some(e) = found {
            if self.recent.first() != Some(&fp) {
                self.recent.retain(|&f| f != fp);
                self.recent.insert(0, fp);
                self.recent.truncate(RECENT);
            }
            match &e.plan {
                Plan::Fixed(d) => return Ok(d.clone()),
                Plan::Literal { index, table } => {
                    let t = &layout.tables[*table];
                    let Some(text) = self.literals.get(*index).and_then(|&r| literal(sql, r)) else {
                        return super::route::route(layout, sql, ask);
                    };
                    let v = t.key_type.from_text(&text).map_err(RouteError::BadKey)?;
                    return t.shard_of(Some(&v), layout.shards).map(Decision::One).map_err(RouteError::BadKey);
                }
                Plan::Param { n, table } => {
                    if let Some(params) = ask.params {
                        let t = &layout.tables[*table];
                        let v = params.key(*n, t.key_type)?;
                        return t.shard_of(v.as_ref(), layout.shards).map(Decision::One).map_err(RouteError::BadKey);
                    }
                }
            }
        }
        if hit.is_some() {
            // Recognised by skeleton but not answerable from it: the key is needed to store.
            self.key.clear();
            self.literals.clear();
            normalize_into(sql, &mut self.key, &mut self.literals);
        }
        let (decision, used) = route_explained(layout, sql, ask);
        let decision = decision?;
        if self.key.len() <= MAX_KEY {
            if let Some(plan) = plan_of(&decision, &used, &self.literals) {
                let skeleton = Skeleton::new(sql, &self.literals);
                self.entries.put(fp, Entry { key: self.key.as_slice().into(), plan, skeleton });
            }
        }
        Ok(decision)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn plan_of(d: &Decision, used: &[Used], literals: &[(usize, usize)]) -> Option<Plan> {
    match (d, used) {
        (Decision::Split(_) | Decision::CopyIn(_), _) => None,
        (_, []) => Some(Plan::Fixed(d.clone())),
        (Decision::One(_), [Used::Literal { at, table }]) => {
            let index = literals.iter().position(|&(start, _)| start == *at)?;
            Some(Plan::Literal { index, table: *table })
        }
        (Decision::One(_), [Used::Param { n, table }]) => Some(Plan::Param { n: *n, table: *table }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::hash::partition;
    use crate::shard::{Function, KeyType, KeyValue, ShardedTable};

    fn layout() -> Layout {
        Layout {
            targets: vec!["a".into(), "b".into(), "c".into()],
            shards: 3,
            tables: vec![ShardedTable {
                schema: None,
                name: "t".into(),
                key: "id".into(),
                key_type: KeyType::BigInt,
                function: Function::Hash,
            }],
            federation: vec![],
            home: None,
        }
    }

    #[test]
    fn cached_shapes_route_like_a_full_parse() {
        let l = layout();
        let mut c = RouteCache::default();
        for v in 0..300i64 {
            for sql in [
                format!("SELECT v FROM t WHERE id = {v}"),
                format!("select v from t where name = 'x' and id = '{v}'"),
                format!("UPDATE t SET v = v + {} WHERE id = {v}", v % 5),
                format!("SELECT count(*) FROM t WHERE v > {v}"),
            ] {
                assert_eq!(
                    c.route(&l, &sql, Ask::default()),
                    super::super::route::route(&l, &sql, Ask::default()),
                    "{sql}"
                );
            }
            let want = partition(Some(&KeyValue::Int(v)), 3) as usize;
            assert_eq!(
                c.route(&l, &format!("SELECT 1 FROM t WHERE id = {v}"), Ask::default()),
                Ok(Decision::One(want))
            );
        }
        assert_eq!(c.len(), 5, "one entry per shape");
        // Shapes whose decision needs more than one literal are routed in full, never cached wrong.
        assert_eq!(
            c.route(&l, "SELECT * FROM t WHERE id IN (1, 2, 3)", Ask::default()),
            super::super::route::route(&l, "SELECT * FROM t WHERE id IN (1, 2, 3)", Ask::default())
        );
        assert_eq!(
            c.route(&l, "SELECT * FROM t WHERE id = -5", Ask::default()),
            super::super::route::route(&l, "SELECT * FROM t WHERE id = -5", Ask::default())
        );
        assert_eq!(c.len(), 5);
        // Parameters: the plan reads the Bind again; a Parse without its Bind is not cached.
        let sql = "SELECT v FROM t WHERE id = $1";
        assert!(matches!(c.route(&l, sql, Ask::default()), Ok(Decision::Scatter(_))));
        for v in [5i64, 6, 7, 8] {
            let mut bind = vec![0, 0, 0, 1];
            bind.extend_from_slice(&(v.to_string().len() as i32).to_be_bytes());
            bind.extend_from_slice(v.to_string().as_bytes());
            bind.extend_from_slice(&[0, 0]);
            let p = super::super::route::Params::parse(&bind).unwrap();
            let ask = Ask { params: Some(&p), session_key: None };
            let want = partition(Some(&KeyValue::Int(v)), 3) as usize;
            assert_eq!(c.route(&l, sql, ask), Ok(Decision::One(want)));
        }
        assert_eq!(c.len(), 6);
        // A bad literal in a cached shape is still refused.
        assert!(matches!(c.route(&l, "SELECT v FROM t WHERE id = 'x'", Ask::default()), Err(RouteError::BadKey(_))));
    }
}
