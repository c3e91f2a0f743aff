//! Sharding and federation against real PostgreSQL: the hash function agrees with PostgreSQL's
//! own `satisfies_hash_partition()`, rows inserted through the proxy land on the shard hash
//! partitioning assigns, point statements reach one shard, and federated tables stay on their
//! cluster.

use pgweir::shard::hash::partition;
use pgweir::shard::KeyValue;

use crate::harness::pg::{PgCluster, PgOptions};

/// Deterministic spread of 64-bit values (splitmix64).
fn values(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
        .collect()
}

/// For each value (as text) of `sql_type`, the remainder PostgreSQL assigns under `modulus`.
async fn remainders(db: &tokio_postgres::Client, sql_type: &str, texts: &[String], modulus: u64) -> Vec<i32> {
    let parent = format!("hp_{}", sql_type.replace(' ', "_"));
    db.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {parent} (k {sql_type}) PARTITION BY HASH (k)"))
        .await
        .unwrap();
    let sql = format!(
        "SELECT (SELECT r FROM generate_series(0, {m} - 1) r \
                 WHERE satisfies_hash_partition('{parent}'::regclass, {m}, r, v.k)) \
         FROM (SELECT k::{sql_type} AS k, o FROM unnest($1::text[]) WITH ORDINALITY AS u(k, o)) v ORDER BY o",
        m = modulus
    );
    let rows = db.query(&sql, &[&texts]).await.unwrap();
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

#[tokio::test]
async fn hash_matches_postgres_partitioning_for_every_key_type() {
    let pg = PgCluster::start(PgOptions::default());
    let db = pg.connect("postgres", "postgres").await;
    const N: usize = 5000;
    let raw = values(N, 7);
    let mut cases: Vec<(&str, Vec<String>, Vec<KeyValue>)> = Vec::new();
    let ints = |f: fn(u64) -> i64| -> (Vec<String>, Vec<KeyValue>) {
        let mut v: Vec<i64> = raw.iter().map(|&x| f(x)).collect();
        v.extend([0, 1, -1]);
        (v.iter().map(i64::to_string).collect(), v.into_iter().map(KeyValue::Int).collect())
    };
    let (t, k) = ints(|x| x as i64);
    cases.push(("bigint", t, k));
    let (t, k) = ints(|x| x as i32 as i64);
    cases.push(("integer", t, k));
    let (t, k) = ints(|x| x as i16 as i64);
    cases.push(("smallint", t, k));
    // Text of every length 0..=40 (tails of all sizes), ASCII and multibyte UTF-8.
    let alphabet: Vec<char> = "abcXYZ019 _-é漢字🙂".chars().collect();
    let texts: Vec<String> = raw
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let len = i % 41;
            (0..len).map(|j| alphabet[((x >> (j % 16)) as usize + j) % alphabet.len()]).collect()
        })
        .collect();
    let keys = texts.iter().map(|s| KeyValue::Text(s.as_bytes().to_vec())).collect();
    cases.push(("text", texts.clone(), keys));
    cases.push(("varchar", texts.clone(), texts.iter().map(|s| KeyValue::Text(s.as_bytes().to_vec())).collect()));
    let uuids: Vec<[u8; 16]> = raw
        .chunks(1)
        .zip(values(N, 11))
        .map(|(a, b)| {
            let mut u = [0u8; 16];
            u[..8].copy_from_slice(&a[0].to_be_bytes());
            u[8..].copy_from_slice(&b.to_be_bytes());
            u
        })
        .collect();
    let utext = uuids
        .iter()
        .map(|u| {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        })
        .collect();
    cases.push(("uuid", utext, uuids.into_iter().map(KeyValue::Uuid).collect()));

    for (ty, texts, keys) in &cases {
        assert!(texts.len() >= N);
        for m in [2u64, 3, 8] {
            let theirs = remainders(&db, ty, texts, m).await;
            let mismatches: Vec<String> = keys
                .iter()
                .zip(&theirs)
                .zip(texts)
                .filter(|((k, &r), _)| partition(Some(k), m) != r as u64)
                .map(|((k, r), t)| format!("{t:?} → ours {} theirs {r}", partition(Some(k), m)))
                .take(5)
                .collect();
            assert!(mismatches.is_empty(), "{ty} modulus {m}: {mismatches:?}");
            // Every remainder is used: the comparison is not vacuous.
            for r in 0..m as i32 {
                assert!(theirs.contains(&r), "{ty} modulus {m}: remainder {r} never assigned");
            }
        }
    }
}
