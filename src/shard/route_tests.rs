use super::*;
use crate::shard::{FederationRule, Function, KeyType, ShardedTable};

fn layout() -> Layout {
    Layout {
        targets: vec!["s0".into(), "s1".into(), "billing".into()],
        shards: 2,
        tables: vec![
            ShardedTable {
                schema: None,
                name: "users".into(),
                key: "id".into(),
                key_type: KeyType::BigInt,
                function: Function::Hash,
            },
            ShardedTable {
                schema: None,
                name: "orders".into(),
                key: "user_id".into(),
                key_type: KeyType::BigInt,
                function: Function::Hash,
            },
        ],
        federation: vec![FederationRule { schema: None, table: Some("invoices".into()), target: 2 }],
        home: None,
    }
}

fn shard_of(v: i64) -> usize {
    crate::shard::hash::partition(Some(&KeyValue::Int(v)), 2) as usize
}

fn r(sql: &str) -> Result<Decision, RouteError> {
    route(&layout(), sql, Ask::default())
}

/// Two keys on different shards.
fn two_keys() -> (i64, i64) {
    let a = 1;
    let b = (2..100).find(|&v| shard_of(v) != shard_of(a)).unwrap();
    (a, b)
}

#[test]
fn point_reads_and_writes_go_to_their_shard() {
    for v in [1i64, 2, 3, 42, -7, 1 << 40] {
        let s = shard_of(v);
        assert_eq!(r(&format!("SELECT * FROM users WHERE id = {v}")), Ok(Decision::One(s)), "{v}");
        assert_eq!(r(&format!("select name from users u where u.id = '{v}' and name <> 'x'")), Ok(Decision::One(s)));
        assert_eq!(r(&format!("UPDATE users SET name = 'n' WHERE id = {v}::bigint")), Ok(Decision::One(s)));
        assert_eq!(r(&format!("DELETE FROM orders WHERE user_id = {v}")), Ok(Decision::One(s)));
        assert_eq!(r(&format!("INSERT INTO users (id, name) VALUES ({v}, 'a')")), Ok(Decision::One(s)));
    }
}

#[test]
fn in_lists_and_ors_route_to_the_subset() {
    let (a, b) = two_keys();
    let both = Decision::Scatter(vec![0, 1]);
    assert_eq!(r(&format!("SELECT * FROM users WHERE id IN ({a}, {b})")), Ok(both.clone()));
    assert_eq!(r(&format!("SELECT * FROM users WHERE id = {a} OR id = {b}")), Ok(both));
    assert_eq!(r(&format!("SELECT * FROM users WHERE id IN ({a}, {a})")), Ok(Decision::One(shard_of(a))));
    // An OR with a non-key branch could match anywhere.
    assert_eq!(r(&format!("SELECT * FROM users WHERE id = {a} OR name = 'x'")), Ok(Decision::Scatter(vec![0, 1])));
    // Contradictions match nothing: any one shard answers.
    assert!(matches!(r(&format!("SELECT * FROM users WHERE id = {a} AND id = {b}")), Ok(Decision::One(_))));
}

#[test]
fn reads_without_a_key_scatter_and_writes_are_refused() {
    assert_eq!(r("SELECT count(*) FROM users"), Ok(Decision::Scatter(vec![0, 1])));
    assert_eq!(r("SELECT * FROM users WHERE name = 'x'"), Ok(Decision::Scatter(vec![0, 1])));
    for sql in
        ["UPDATE users SET name = 'x'", "DELETE FROM users WHERE name = 'x'", "INSERT INTO users (id) VALUES (DEFAULT)"]
    {
        let e = r(sql).unwrap_err();
        assert!(matches!(e, RouteError::NoKey { .. }), "{sql}: {e}");
        assert_eq!(e.sqlstate(), SqlState::FEATURE_NOT_SUPPORTED);
        assert!(e.to_string().contains("no shard key"), "{e}");
    }
    let e = r("INSERT INTO users VALUES (1, 'a')").unwrap_err();
    assert!(e.to_string().contains("must list its columns"), "{e}");
    let e = r("UPDATE users SET id = 5 WHERE id = 1").unwrap_err();
    assert!(e.to_string().contains("changes the shard key"), "{e}");
}

#[test]
fn parameters_in_text_and_binary() {
    let l = layout();
    let (a, b) = two_keys();
    // Bind body after names: formats, values, result formats.
    let mut bind = Vec::new();
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes()); // binary
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&8i32.to_be_bytes());
    bind.extend_from_slice(&b.to_be_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let p = Params::parse(&bind).unwrap();
    let ask = Ask { params: Some(&p), session_key: None };
    assert_eq!(route(&l, "SELECT * FROM users WHERE id = $1", ask), Ok(Decision::One(shard_of(b))));
    let text = a.to_string();
    let mut bind = vec![0, 0, 0, 1];
    bind.extend_from_slice(&(text.len() as i32).to_be_bytes());
    bind.extend_from_slice(text.as_bytes());
    bind.extend_from_slice(&[0, 0]);
    let p = Params::parse(&bind).unwrap();
    let ask = Ask { params: Some(&p), session_key: None };
    assert_eq!(route(&l, "DELETE FROM users WHERE id = $1", ask), Ok(Decision::One(shard_of(a))));
    assert!(matches!(route(&l, "DELETE FROM users WHERE id = $2", ask), Err(RouteError::BadKey(_))));
}

#[test]
fn multi_row_inserts_are_cut_per_shard() {
    let (a, b) = two_keys();
    let sql = format!("INSERT INTO users (id, name) VALUES ({a}, 'x, y'), ({b}, 'é'),\n ({a}, ')') RETURNING id");
    let Ok(Decision::Split(parts)) = r(&sql) else { panic!("{:?}", r(&sql)) };
    let get = |s: usize| parts.iter().find(|(t, _)| *t == s).map(|(_, q)| q.as_str()).unwrap();
    assert_eq!(get(shard_of(a)), format!("INSERT INTO users (id, name) VALUES ({a}, 'x, y'), ({a}, ')') RETURNING id"));
    assert_eq!(get(shard_of(b)), format!("INSERT INTO users (id, name) VALUES ({b}, 'é') RETURNING id"));
    // The last row ends the text.
    let sql = format!("INSERT INTO users (id) VALUES ({a}), ({b})");
    let Ok(Decision::Split(parts)) = r(&sql) else { panic!("{:?}", r(&sql)) };
    assert!(parts.iter().any(|(_, q)| q.ends_with(&format!("VALUES ({b})"))), "{parts:?}");
}

#[test]
fn hints_and_session_keys() {
    let l = layout();
    assert_eq!(r("/* pgweir: shard=1 */ UPDATE users SET name = 'x'"), Ok(Decision::One(1)));
    assert!(matches!(r("/* pgweir: shard=9 */ SELECT 1"), Err(RouteError::BadHint(_))));
    let (_, b) = two_keys();
    assert_eq!(r(&format!("/* pgweir: key={b} */ DELETE FROM users")), Ok(Decision::One(shard_of(b))));
    let key = b.to_string();
    let ask = Ask { params: None, session_key: Some(&key) };
    assert_eq!(route(&l, "SELECT count(*) FROM orders", ask), Ok(Decision::One(shard_of(b))));
}

#[test]
fn federation_and_joins() {
    assert_eq!(r("SELECT * FROM invoices WHERE total > 3"), Ok(Decision::One(2)));
    let e = r("SELECT * FROM invoices i JOIN users u ON u.id = i.user_id WHERE u.id = 1").unwrap_err();
    assert!(matches!(e, RouteError::CrossCluster(..)), "{e}");
    // Co-located sharded tables join on one shard.
    let (a, _) = two_keys();
    assert_eq!(
        r(&format!("SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {a}")),
        Ok(Decision::One(shard_of(a)))
    );
    // No table: anywhere; reference tables (no rule) too, but never written through.
    assert_eq!(r("SELECT 1"), Ok(Decision::Any));
    assert_eq!(r("SET search_path = x"), Ok(Decision::Any));
    assert_eq!(r("SELECT * FROM countries"), Ok(Decision::Any));
    assert!(r("INSERT INTO countries (c) VALUES ('x')").is_err());
    assert_eq!(r("COPY invoices (id) FROM STDIN"), Ok(Decision::One(2)));
    assert!(matches!(r("COPY users (id, name) FROM STDIN"), Ok(Decision::CopyIn(_))));
    assert!(r("COPY users TO STDOUT").is_err());
    let e = r("SELECT * FROM invoices; SELECT * FROM users WHERE id = 1").unwrap_err();
    assert!(e.to_string().contains("one at a time"), "{e}");
    // DDL naming a sharded table is not guessed at.
    assert!(r("ALTER TABLE users ADD COLUMN x int").is_err());
}

#[test]
fn locations_become_byte_offsets() {
    let sql = "ab\néx(y)";
    let at = |line, column| offset(sql, sqlparser::tokenizer::Location { line, column });
    assert_eq!(at(1, 1), Some(0));
    assert_eq!(at(2, 1), Some(3));
    assert_eq!(at(2, 3), Some(6));
    assert_eq!(at(2, 6), Some(sql.len()));
    assert_eq!(at(1, 3), Some(2));
    assert_eq!(at(2, 7), None);
}
