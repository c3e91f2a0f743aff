//! Sharding and federation: one client database spread over several clusters. A [`Layout`]
//! (from `[databases.NAME]` with `shards` and/or `federation`) says which cluster holds which
//! table, and for sharded tables which shard holds which key; `route` reads a statement and
//! says where it runs; `hash` is PostgreSQL's own hash partitioning, so rows sit where a
//! `PARTITION BY HASH` table with the same modulus would put them. Pure: no I/O.

pub mod cache;
pub mod copy;
pub mod finish;
pub mod hash;
pub mod merge;
pub mod order;
pub mod params;
pub mod route;
pub mod value;

pub use hash::KeyValue;
pub use value::KeyType;

/// How a sharded table's keys map to shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Function {
    /// PostgreSQL-compatible hash partitioning with modulus = the number of shards.
    Hash,
    /// Shard i holds keys in `[bounds[i-1], bounds[i])` (shard 0 everything below `bounds[0]`,
    /// the last shard everything from the last bound up): one bound fewer than shards.
    Range(Vec<KeyValue>),
    /// Each listed value and the shard that holds it.
    List(Vec<(KeyValue, usize)>),
}

/// One sharded table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedTable {
    /// None: the table is matched by name in any schema.
    pub schema: Option<String>,
    pub name: String,
    pub key: String,
    pub key_type: KeyType,
    pub function: Function,
}

/// Where a federation rule sends a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationRule {
    /// `schema.*` (every table of a schema), `schema.table` or `table` (any schema).
    pub schema: Option<String>,
    /// None: the whole schema.
    pub table: Option<String>,
    pub target: usize,
}

/// A database spread over clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Cluster names in target order: the shards first (shard i is target i), then the
    /// clusters federation rules and `cluster` name.
    pub targets: Vec<String>,
    /// How many of the targets are shards.
    pub shards: usize,
    pub tables: Vec<ShardedTable>,
    pub federation: Vec<FederationRule>,
    /// Where tables no rule names live; None (a sharded database without `cluster`): on every
    /// shard (reference tables): reads go with the shard the statement picks, or shard 0.
    pub home: Option<usize>,
}

/// Where one table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Sharded: index into `Layout::tables`.
    Sharded(usize),
    /// On one target.
    On(usize),
    /// On every shard (reference table).
    Everywhere,
}

impl Layout {
    /// Where the table `schema.name` (schema None: unqualified) lives.
    pub fn place(&self, schema: Option<&str>, name: &str) -> Placement {
        let schema_ok = |s: &Option<String>| s.is_none() || s.as_deref() == schema;
        if let Some(i) = self.tables.iter().position(|t| t.name == name && schema_ok(&t.schema)) {
            return Placement::Sharded(i);
        }
        // A named table beats its schema's rule.
        let rule =
            self.federation.iter().find(|r| r.table.as_deref() == Some(name) && schema_ok(&r.schema)).or_else(|| {
                self.federation.iter().find(|r| r.table.is_none() && schema.is_some() && r.schema.as_deref() == schema)
            });
        match (rule, self.home) {
            (Some(r), _) => Placement::On(r.target),
            (None, Some(h)) => Placement::On(h),
            (None, None) => Placement::Everywhere,
        }
    }

    /// Where statements that touch no table (SET, SELECT 1) run.
    pub fn default_target(&self) -> usize {
        self.home.unwrap_or(0)
    }
}

impl ShardedTable {
    /// The shard holding `key` (None: NULL) among `shards`.
    pub fn shard_of(&self, key: Option<&KeyValue>, shards: usize) -> Result<usize, String> {
        match (&self.function, key) {
            (Function::Hash, k) => Ok(hash::partition(k, shards as u64) as usize),
            (_, None) => Err(format!("a NULL {}.{} has no shard", self.name, self.key)),
            (Function::Range(bounds), Some(k)) => Ok(bounds.iter().take_while(|b| *b <= k).count()),
            (Function::List(values), Some(k)) => values
                .iter()
                .find(|(v, _)| v == k)
                .map(|(_, s)| *s)
                .ok_or_else(|| format!("no shard holds {}.{} = {}", self.name, self.key, show(k))),
        }
    }
}

/// A key for messages.
pub fn show(k: &KeyValue) -> String {
    match k {
        KeyValue::Int(v) => v.to_string(),
        KeyValue::Text(b) => format!("'{}'", String::from_utf8_lossy(b)),
        KeyValue::Uuid(u) => {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!("'{}-{}-{}-{}-{}'", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(function: Function) -> ShardedTable {
        ShardedTable { schema: None, name: "t".into(), key: "id".into(), key_type: KeyType::BigInt, function }
    }

    #[test]
    fn ranges_and_lists() {
        let r = table(Function::Range(vec![KeyValue::Int(100), KeyValue::Int(200)]));
        let at = |v| r.shard_of(Some(&KeyValue::Int(v)), 3).unwrap();
        assert_eq!((at(-5), at(99), at(100), at(199), at(200), at(10_000)), (0, 0, 1, 1, 2, 2));
        assert!(r.shard_of(None, 3).is_err());
        let l = table(Function::List(vec![(KeyValue::Int(1), 1), (KeyValue::Int(2), 0)]));
        assert_eq!(l.shard_of(Some(&KeyValue::Int(1)), 2), Ok(1));
        assert!(l.shard_of(Some(&KeyValue::Int(3)), 2).unwrap_err().contains("no shard holds t.id = 3"));
    }

    #[test]
    fn placement_prefers_sharded_then_table_then_schema_rules() {
        let layout = Layout {
            targets: vec!["s0".into(), "s1".into(), "billing".into(), "main".into()],
            shards: 2,
            tables: vec![table(Function::Hash)],
            federation: vec![
                FederationRule { schema: Some("billing".into()), table: None, target: 2 },
                FederationRule { schema: None, table: Some("audit".into()), target: 2 },
            ],
            home: Some(3),
        };
        assert_eq!(layout.place(None, "t"), Placement::Sharded(0));
        assert_eq!(layout.place(Some("billing"), "invoices"), Placement::On(2));
        assert_eq!(layout.place(None, "audit"), Placement::On(2));
        assert_eq!(layout.place(None, "users"), Placement::On(3));
        assert_eq!(Layout { home: None, ..layout }.place(None, "users"), Placement::Everywhere);
    }
}
