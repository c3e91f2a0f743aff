use super::*;

fn fin(sql: &str) -> Final {
    match plan(sql) {
        Ok(Plan::Final(f)) => f,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn plain_reads_concatenate_with_limits_after_the_merge() {
    assert_eq!(
        plan("SELECT id, name FROM users WHERE name LIKE 'a%'"),
        Ok(Plan::Concat { shard_sql: "SELECT id, name FROM users WHERE name LIKE 'a%'".into(), skip: 0, take: None })
    );
    assert_eq!(
        plan("SELECT * FROM users LIMIT 10 OFFSET 5"),
        Ok(Plan::Concat { shard_sql: "SELECT * FROM users LIMIT 15".into(), skip: 5, take: Some(10) })
    );
}

#[test]
fn order_by_limit_is_finished_by_postgres() {
    let f = fin("SELECT id, name FROM users ORDER BY id DESC NULLS LAST LIMIT 10 OFFSET 2");
    assert_eq!(f.shard_sql, "SELECT id, name FROM users ORDER BY id DESC NULLS LAST LIMIT 12");
    assert_eq!(
        f.final_sql(&[20, 25], &["id".into(), "name".into()], 2).unwrap(),
        "SELECT c1 AS \"id\", c2 AS \"name\" FROM (VALUES ($1, $2), ($3, $4)) AS pgweir_partial(c1, c2) ORDER BY 1 DESC NULLS LAST LIMIT 10 OFFSET 2"
    );
    // SELECT * orders by a name found in the result's columns.
    let f = fin("SELECT * FROM users ORDER BY name LIMIT 3");
    assert_eq!(
        f.final_sql(&[20, 25], &["id".into(), "name".into()], 1).unwrap(),
        "SELECT c1 AS \"id\", c2 AS \"name\" FROM (VALUES ($1, $2)) AS pgweir_partial(c1, c2) ORDER BY 2 ASC LIMIT 3"
    );
    assert!(f.final_sql(&[20], &["id".into()], 1).is_err());
}

#[test]
fn aggregates_become_partials_and_a_final_combination() {
    let f = fin("SELECT count(*), sum(x), avg(x), min(name), max(x) AS top FROM t WHERE y > 1");
    assert_eq!(f.shard_sql, "SELECT count(*), sum(x), sum(x), count(x), min(name), max(x) FROM t WHERE y > 1");
    // int4 x: partial sums are int8; the final sum is int8 again and avg numeric, as PostgreSQL's.
    let sql = f.final_sql(&[20, 20, 20, 20, 25, 23], &[], 2).unwrap();
    assert_eq!(
        sql,
        "SELECT CAST(coalesce(sum(c1), 0) AS int8) AS \"count\", CAST(sum(c2) AS int8) AS \"sum\", \
         CAST(sum(c3) AS numeric) / NULLIF(sum(c4), 0) AS \"avg\", min(c5) AS \"min\", max(c6) AS \"top\" \
         FROM (VALUES ($1, $2, $3, $4, $5, $6), ($7, $8, $9, $10, $11, $12)) AS pgweir_partial(c1, c2, c3, c4, c5, c6)"
    );
}

#[test]
fn group_by_combines_per_group_and_orders_after() {
    let f = fin("SELECT region, count(*) AS n, avg(amount) FROM orders GROUP BY region ORDER BY n DESC, 1 LIMIT 5");
    assert_eq!(f.shard_sql, "SELECT region, count(*), sum(amount), count(amount) FROM orders GROUP BY region");
    let sql = f.final_sql(&[25, 20, 1700, 20], &[], 3).unwrap();
    assert!(sql.ends_with("GROUP BY c1 ORDER BY 2 DESC, 1 ASC LIMIT 5"), "{sql}");
    // GROUP BY a position or a column not shown.
    let f = fin("SELECT region, sum(x) FROM t GROUP BY 1");
    assert_eq!(f.shard_sql, "SELECT region, sum(x) FROM t GROUP BY region");
    let f = fin("SELECT sum(x) FROM t GROUP BY region");
    assert_eq!(f.shard_sql, "SELECT sum(x), region FROM t GROUP BY region");
    assert!(f.final_sql(&[20, 25], &[], 1).unwrap().contains("GROUP BY c2"));
}

#[test]
fn what_cannot_be_merged_says_why() {
    for (sql, why) in [
        ("SELECT DISTINCT name FROM t", "SELECT DISTINCT"),
        ("SELECT name, count(*) FROM t GROUP BY name HAVING count(*) > 1", "HAVING"),
        ("SELECT count(DISTINCT x) FROM t", "DISTINCT"),
        ("SELECT string_agg(name, ',') FROM t", "string_agg"),
        ("SELECT sum(x) * 2 FROM t", "expression over an aggregate"),
        ("SELECT x, row_number() OVER () FROM t ORDER BY x", "window function"),
        ("SELECT a FROM t UNION SELECT a FROM u", "UNION"),
        ("SELECT name, count(*) FROM t", "GROUP BY clause"),
        ("SELECT id FROM t ORDER BY lower(name) LIMIT 3", "ORDER BY lower(name)"),
        ("SELECT id FROM t LIMIT $1", "LIMIT"),
    ] {
        let e = plan(sql).unwrap_err().to_string();
        assert!(e.contains(why), "{sql}: {e}");
    }
}
