//! Ordering rows the way PostgreSQL's default btree operators would, for the types where the
//! wire value says everything (integers, floats, numeric, bool, uuid; text or binary format),
//! so a streaming k-way merge can interleave shards that each sent sorted rows. Collatable
//! types (text, varchar, ...) are not here: their order depends on the collation, and those
//! merges are finished by PostgreSQL instead. Pure: no I/O.

use std::cmp::Ordering;

/// How one column's values compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// int2/int4/int8/oid in text.
    Int,
    /// float4/float8 in text (NaN sorts above everything, as in PostgreSQL).
    Float,
    /// numeric in text (NaN above everything, then Infinity).
    Numeric,
    /// bool in text (`f` < `t`) or binary (0 < 1); uuid in text (lower-case hex) or binary:
    /// byte order is the type's order.
    Bytes,
    /// Big-endian two's complement integers (binary int2/int4/int8).
    BinInt,
    /// Binary float4 / float8.
    BinFloat4,
    BinFloat8,
}

/// The comparison for a column of type `oid` sent in `format` (0 text, 1 binary), if the proxy
/// can order it exactly.
pub fn kind(oid: u32, format: i16) -> Option<Kind> {
    Some(match (oid, format) {
        (20 | 21 | 23 | 26, 0) => Kind::Int,
        (20 | 21 | 23, 1) => Kind::BinInt,
        (700 | 701, 0) => Kind::Float,
        (700, 1) => Kind::BinFloat4,
        (701, 1) => Kind::BinFloat8,
        (1700, 0) => Kind::Numeric,
        (16 | 2950, 0 | 1) => Kind::Bytes,
        _ => return None,
    })
}

/// One ORDER BY key resolved to a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortKey {
    pub col: usize,
    pub kind: Kind,
    pub desc: bool,
    pub nulls_first: bool,
}

/// Compares two rows (column values, None for NULL) by `keys`.
pub fn compare(keys: &[SortKey], a: &[Option<&[u8]>], b: &[Option<&[u8]>]) -> Ordering {
    for k in keys {
        let (x, y) = (a.get(k.col).copied().flatten(), b.get(k.col).copied().flatten());
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            // NULL placement is independent of the direction.
            (None, Some(_)) => return if k.nulls_first { Ordering::Less } else { Ordering::Greater },
            (Some(_), None) => return if k.nulls_first { Ordering::Greater } else { Ordering::Less },
            (Some(x), Some(y)) => {
                let o = value(k.kind, x, y);
                if k.desc {
                    o.reverse()
                } else {
                    o
                }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn value(kind: Kind, x: &[u8], y: &[u8]) -> Ordering {
    let text = |b: &[u8]| std::str::from_utf8(b).unwrap_or("").trim().to_string();
    match kind {
        Kind::Int => {
            let p = |b: &[u8]| text(b).parse::<i128>().unwrap_or(0);
            p(x).cmp(&p(y))
        }
        Kind::Float => float(parse_float(&text(x)), parse_float(&text(y))),
        Kind::Numeric => numeric(&text(x), &text(y)),
        Kind::Bytes => x.cmp(y),
        Kind::BinInt => {
            let p = |b: &[u8]| match b.len() {
                2 => i16::from_be_bytes([b[0], b[1]]) as i64,
                4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
                8 => i64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
                _ => 0,
            };
            p(x).cmp(&p(y))
        }
        Kind::BinFloat4 => {
            let p = |b: &[u8]| f32::from_be_bytes(b.try_into().unwrap_or([0; 4])) as f64;
            float(p(x), p(y))
        }
        Kind::BinFloat8 => {
            let p = |b: &[u8]| f64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            float(p(x), p(y))
        }
    }
}

fn parse_float(s: &str) -> f64 {
    match s {
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

/// PostgreSQL's float order: NaN equals NaN and is above everything; -0 equals 0.
fn float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Numeric text order: -Infinity < finite values < Infinity < NaN; finite values by sign, then
/// magnitude digit by digit (any scale).
fn numeric(a: &str, b: &str) -> Ordering {
    fn rank(s: &str) -> i8 {
        match s {
            "NaN" => 3,
            "Infinity" => 2,
            "-Infinity" => 0,
            _ => 1,
        }
    }
    let (ra, rb) = (rank(a), rank(b));
    if ra != 1 || rb != 1 {
        return ra.cmp(&rb);
    }
    let split = |s: &str| {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0').to_string();
        let frac = frac.trim_end_matches('0').to_string();
        let zero = int.is_empty() && frac.is_empty();
        (neg && !zero, zero, int, frac)
    };
    let (na, za, ia, fa) = split(a);
    let (nb, zb, ib, fb) = split(b);
    let sign = |neg: bool, zero: bool| {
        if zero {
            0
        } else if neg {
            -1
        } else {
            1
        }
    };
    let (sa, sb) = (sign(na, za), sign(nb, zb));
    if sa != sb || sa == 0 {
        return sa.cmp(&sb);
    }
    let magnitude = ia.len().cmp(&ib.len()).then_with(|| ia.cmp(&ib)).then_with(|| fa.cmp(&fb));
    if sa < 0 {
        magnitude.reverse()
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(kind: Kind, mut v: Vec<&str>) -> Vec<&str> {
        v.sort_by(|a, b| value(kind, a.as_bytes(), b.as_bytes()));
        v
    }

    #[test]
    fn numerics_order_by_value_not_text() {
        assert_eq!(
            sorted(
                Kind::Numeric,
                vec!["NaN", "10", "-2.50", "9.9", "-Infinity", "0.000", "-10", "Infinity", "-2.5001", "0.1"]
            ),
            vec!["-Infinity", "-10", "-2.5001", "-2.50", "0.000", "0.1", "9.9", "10", "Infinity", "NaN"]
        );
        assert_eq!(numeric("1.50", "1.5"), Ordering::Equal);
        assert_eq!(numeric("-0.0", "0"), Ordering::Equal);
    }

    #[test]
    fn floats_put_nan_last_and_integers_compare_as_numbers() {
        assert_eq!(
            sorted(Kind::Float, vec!["NaN", "1e10", "-Infinity", "2.5", "-0"]),
            vec!["-Infinity", "-0", "2.5", "1e10", "NaN"]
        );
        assert_eq!(sorted(Kind::Int, vec!["10", "-3", "9"]), vec!["-3", "9", "10"]);
        let a = (-5i64).to_be_bytes();
        let b = 3i64.to_be_bytes();
        assert_eq!(value(Kind::BinInt, &a, &b), Ordering::Less);
    }

    #[test]
    fn keys_apply_direction_and_null_placement() {
        let k = |desc, nulls_first| [SortKey { col: 0, kind: Kind::Int, desc, nulls_first }];
        let one: [Option<&[u8]>; 1] = [Some(b"1")];
        let two: [Option<&[u8]>; 1] = [Some(b"2")];
        let null: [Option<&[u8]>; 1] = [None];
        assert_eq!(compare(&k(false, false), &one, &two), Ordering::Less);
        assert_eq!(compare(&k(true, true), &one, &two), Ordering::Greater);
        assert_eq!(compare(&k(false, false), &null, &one), Ordering::Greater);
        assert_eq!(compare(&k(true, true), &null, &one), Ordering::Less);
        assert_eq!(kind(25, 0), None, "text depends on the collation");
    }
}
