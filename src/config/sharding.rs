//! `[databases.NAME]` keys that spread a database over clusters: `shards`, `[[...sharded]]`
//! tables and `[...federation]` rules, checked and turned into a `shard::Layout`.

use std::collections::BTreeMap;

use super::raw::{RawDatabase, RawShardedTable, Scalar};
use super::validate::Validator;
use super::{Cluster, ConfigError};
use crate::shard::{FederationRule, Function, KeyType, KeyValue, Layout, ShardedTable};

impl Validator<'_> {
    /// The database's layout; None for a database on one cluster.
    pub(super) fn layout(
        &self,
        db: &str,
        d: &RawDatabase,
        clusters: &BTreeMap<String, Cluster>,
        cluster: &str,
    ) -> Result<Option<std::sync::Arc<Layout>>, ConfigError> {
        let key = |k: &str| format!("databases.{db}.{k}");
        if d.shards.is_empty() && d.federation.is_empty() && d.sharded.is_empty() {
            return Ok(None);
        }
        let mut targets: Vec<String> = Vec::new();
        for s in &d.shards {
            if !clusters.contains_key(s.get_ref()) {
                return self.err(Some(s.span()), &key("shards"), format!("no cluster named \"{}\"", s.get_ref()));
            }
            if targets.contains(s.get_ref()) {
                return self.err(
                    Some(s.span()),
                    &key("shards"),
                    format!("cluster \"{}\" is listed twice", s.get_ref()),
                );
            }
            targets.push(s.get_ref().clone());
        }
        let shards = targets.len();
        let target_of = |name: &str, targets: &mut Vec<String>| match targets.iter().position(|t| t == name) {
            Some(i) => i,
            None => {
                targets.push(name.to_string());
                targets.len() - 1
            }
        };
        // Unmapped tables: on the database's `cluster` when it is given (or when nothing is
        // sharded); else on every shard.
        let home = if d.cluster.is_some() || shards == 0 { Some(target_of(cluster, &mut targets)) } else { None };
        let mut federation = Vec::new();
        for (pattern, c) in &d.federation {
            if !clusters.contains_key(c.get_ref()) {
                return self.err(
                    Some(c.span()),
                    &key(&format!("federation.{pattern}")),
                    format!("no cluster named \"{}\"", c.get_ref()),
                );
            }
            let (schema, table) = match pattern.rsplit_once('.') {
                Some((s, "*")) => (Some(fold(s)), None),
                Some((s, t)) => (Some(fold(s)), Some(fold(t))),
                None => (None, Some(fold(pattern))),
            };
            federation.push(FederationRule { schema, table, target: target_of(c.get_ref(), &mut targets) });
        }
        if !d.sharded.is_empty() && shards == 0 {
            return self.err(
                d.sharded[0].table.span().into(),
                &key("shards"),
                "sharded tables need `shards = [cluster, ...]`",
            );
        }
        let tables = d.sharded.iter().map(|t| self.sharded_table(db, t, shards)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(std::sync::Arc::new(Layout { targets, shards, tables, federation, home })))
    }

    fn sharded_table(&self, db: &str, t: &RawShardedTable, shards: usize) -> Result<ShardedTable, ConfigError> {
        let key = |k: &str| format!("databases.{db}.sharded.{k}");
        let name = t.table.get_ref();
        let (schema, table) = match name.rsplit_once('.') {
            Some((s, n)) => (Some(fold(s)), fold(n)),
            None => (None, fold(name)),
        };
        let key_type =
            KeyType::parse(t.key_type.get_ref()).or_else(|e| self.err(Some(t.key_type.span()), &key("type"), e))?;
        let value = |s: &Scalar, span: std::ops::Range<usize>, k: &str| -> Result<KeyValue, ConfigError> {
            key_type.from_text(&s.text()).or_else(|e| self.err(Some(span), &key(k), e))
        };
        let function = match t.function.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("hash") => Function::Hash,
            Some("range") => {
                let bounds =
                    t.bounds.iter().map(|b| value(b.get_ref(), b.span(), "bounds")).collect::<Result<Vec<_>, _>>()?;
                if bounds.len() + 1 != shards {
                    return self.err(
                        Some(t.table.span()),
                        &key("bounds"),
                        format!(
                            "a range over {shards} shards needs {} bounds (got {})",
                            shards.saturating_sub(1),
                            bounds.len()
                        ),
                    );
                }
                if bounds.windows(2).any(|w| w[0] >= w[1]) {
                    return self.err(Some(t.table.span()), &key("bounds"), "bounds must be strictly ascending");
                }
                Function::Range(bounds)
            }
            Some("list") => {
                if t.values.len() != shards {
                    return self.err(
                        Some(t.table.span()),
                        &key("values"),
                        format!("a list over {shards} shards needs {shards} lists of values (got {})", t.values.len()),
                    );
                }
                let mut list: Vec<(KeyValue, usize)> = Vec::new();
                for (shard, vs) in t.values.iter().enumerate() {
                    for v in vs.get_ref() {
                        let k = value(v, vs.span(), "values")?;
                        if list.iter().any(|(x, _)| *x == k) {
                            return self.err(
                                Some(vs.span()),
                                &key("values"),
                                format!("value {} is listed twice", v.text()),
                            );
                        }
                        list.push((k, shard));
                    }
                }
                Function::List(list)
            }
            Some(other) => {
                let span = t.function.as_ref().map(|f| f.span());
                return self.err(
                    span,
                    &key("function"),
                    format!("unknown function \"{other}\": use hash, range or list"),
                );
            }
        };
        Ok(ShardedTable { schema, name: table, key: fold(t.key.get_ref()), key_type, function })
    }
}

/// Names in the file are folded like unquoted SQL identifiers.
fn fold(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use crate::config::{from_str, Overrides};
    use crate::shard::{Function, KeyValue, Placement};

    const BASE: &str = "[clusters.s0]\nprimary = \"postgres://h:1/a\"\n[clusters.s1]\nprimary = \"postgres://h:1/b\"\n\
                        [clusters.bill]\nprimary = \"postgres://h:2/c\"\n";

    fn parse(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        from_str(&format!("[pool]\nmode = \"transaction\"\n{BASE}{extra}"), "t.toml", &Overrides::default())
    }

    #[test]
    fn a_sharded_and_federated_database() {
        let c = parse(
            "[databases.app]\nshards = [\"s0\", \"s1\"]\n\
             [databases.app.federation]\n\"billing.*\" = \"bill\"\n\
             [[databases.app.sharded]]\ntable = \"Users\"\nkey = \"id\"\ntype = \"bigint\"\n\
             [[databases.app.sharded]]\ntable = \"regions\"\nkey = \"code\"\ntype = \"text\"\nfunction = \"list\"\nvalues = [[\"eu\", \"uk\"], [\"us\"]]\n",
        )
        .unwrap();
        let l = c.databases["app"].layout.as_ref().unwrap();
        assert_eq!(l.targets, ["s0", "s1", "bill"]);
        assert_eq!((l.shards, l.home), (2, None));
        assert_eq!(l.place(None, "users"), Placement::Sharded(0));
        assert_eq!(l.place(Some("billing"), "invoices"), Placement::On(2));
        assert_eq!(
            l.tables[1].function,
            Function::List(vec![
                (KeyValue::Text(b"eu".to_vec()), 0),
                (KeyValue::Text(b"uk".to_vec()), 0),
                (KeyValue::Text(b"us".to_vec()), 1)
            ])
        );
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("[databases.app]\nshards = [\"s0\", \"nope\"]\n", "databases.app.shards", "no cluster named"),
            ("[databases.app]\nshards = [\"s0\", \"s0\"]\n", "databases.app.shards", "listed twice"),
            (
                "[databases.app]\nshards = [\"s0\", \"s1\"]\n[[databases.app.sharded]]\ntable = \"t\"\nkey = \"k\"\ntype = \"float\"\n",
                "databases.app.sharded.type",
                "unsupported shard key type",
            ),
            (
                "[databases.app]\nshards = [\"s0\", \"s1\"]\n[[databases.app.sharded]]\ntable = \"t\"\nkey = \"k\"\ntype = \"int\"\nfunction = \"range\"\nbounds = [1, 2]\n",
                "databases.app.sharded.bounds",
                "needs 1 bounds",
            ),
            (
                "[databases.app]\n[[databases.app.sharded]]\ntable = \"t\"\nkey = \"k\"\ntype = \"int\"\n",
                "databases.app.shards",
                "need `shards",
            ),
            (
                "[databases.app]\npool_mode = \"session\"\nshards = [\"s0\", \"s1\"]\n",
                "databases.app.pool_mode",
                "transaction",
            ),
        ];
        for (text, key, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
    }

    #[test]
    fn federation_alone_keeps_unmapped_tables_home() {
        let c = parse("[databases.app]\ncluster = \"s0\"\n[databases.app.federation]\ninvoices = \"bill\"\n").unwrap();
        let l = c.databases["app"].layout.as_ref().unwrap();
        assert_eq!((l.targets.as_slice(), l.shards, l.home), (&["s0".to_string(), "bill".to_string()][..], 0, Some(0)));
        assert_eq!(l.place(None, "invoices"), Placement::On(1));
        assert_eq!(l.place(None, "users"), Placement::On(0));
    }
}
