//! PostgreSQL's hash partitioning, reproduced bit for bit: a row with key `k` goes to the
//! partition whose remainder is `hash_combine64(0, hashXextended(k, SEED)) % modulus`, all in
//! unsigned 64-bit arithmetic (PostgreSQL 11+, `compute_partition_hash_value`). The per-type
//! functions are those of the default hash operator classes: `hashint2/4/8extended` (the integer
//! types hash alike: an int8 within int4 range hashes as that int4), `hashtextextended` (the
//! bytes, under a deterministic collation) and `uuid_hash_extended` (the 16 bytes). The mixing is
//! Bob Jenkins' lookup3 as in `src/common/hashfn.c`, reading words little-endian (PostgreSQL
//! reads them in host order; every platform this builds for is little-endian).
//!
//! Pure: no I/O.

/// `HASH_PARTITION_SEED` in `src/include/catalog/partition.h`.
pub const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

/// A shard key value, already converted to the column's type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// smallint, integer and bigint (they hash alike).
    Int(i64),
    /// text and varchar: the bytes in the server encoding.
    Text(Vec<u8>),
    Uuid([u8; 16]),
}

/// The partition (remainder) PostgreSQL's `PARTITION BY HASH` with `modulus` assigns; NULL
/// (`None`) goes to remainder 0.
pub fn partition(key: Option<&KeyValue>, modulus: u64) -> u64 {
    debug_assert!(modulus > 0);
    let row = match key {
        None => 0,
        Some(k) => hash_combine64(0, hash_extended(k, PARTITION_SEED)),
    };
    row % modulus
}

/// The type's extended hash with `seed`.
pub fn hash_extended(key: &KeyValue, seed: u64) -> u64 {
    match key {
        KeyValue::Int(v) => hash_int8_extended(*v, seed),
        KeyValue::Text(b) => hash_bytes_extended(b, seed),
        KeyValue::Uuid(u) => hash_bytes_extended(u, seed),
    }
}

/// `hashint8extended`: the high half is folded into the low one so that values that fit in an
/// int4 hash as that int4 (`hashint4extended` and `hashint2extended` are this on the widened
/// value).
fn hash_int8_extended(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let lo = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(lo, seed)
}

/// `hash_combine64` in `src/include/common/hashfn.h`.
pub fn hash_combine64(a: u64, b: u64) -> u64 {
    a ^ b.wrapping_add(0x49a0_f4dd_15e5_a8e3).wrapping_add(a << 54).wrapping_add(a >> 7)
}

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

fn seeded(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// `hash_bytes_uint32_extended`.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(4, seed);
    a = a.wrapping_add(k);
    finish(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// `hash_bytes_extended` (what `hash_any_extended` calls).
pub fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(k.len() as u32, seed);
    let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let mut rest = k;
    while rest.len() >= 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    // The last 0..11 bytes, little-endian into a, b and c; the lowest byte of c is left for
    // the length (it went in at the start).
    let byte = |i: usize, shift: u32| (rest[i] as u32) << shift;
    let n = rest.len();
    if n >= 9 {
        for i in 8..n {
            c = c.wrapping_add(byte(i, 8 * (i as u32 - 7)));
        }
    }
    if n >= 5 {
        for i in 4..n.min(8) {
            b = b.wrapping_add(byte(i, 8 * (i as u32 - 4)));
        }
    }
    for i in 0..n.min(4) {
        a = a.wrapping_add(byte(i, 8 * i as u32));
    }
    finish(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_hash_alike() {
        // An int8 inside int4 range hashes as the int4 would (hashint4extended on the value).
        for v in [0i64, 1, -1, 42, i32::MAX as i64, i32::MIN as i64] {
            assert_eq!(hash_int8_extended(v, PARTITION_SEED), hash_uint32_extended(v as i32 as u32, PARTITION_SEED));
        }
        // Outside it, the high half matters.
        assert_ne!(hash_int8_extended(1 << 32, 7), hash_int8_extended(0, 7));
    }

    #[test]
    fn null_goes_to_remainder_zero() {
        for m in [1, 2, 3, 8] {
            assert_eq!(partition(None, m), 0);
        }
    }

    #[test]
    fn every_tail_length_contributes() {
        // Changing any byte of any length up to two blocks changes the hash.
        for len in 0..=25usize {
            let base: Vec<u8> = (0..len as u8).collect();
            let h = hash_bytes_extended(&base, PARTITION_SEED);
            for i in 0..len {
                let mut other = base.clone();
                other[i] ^= 0x5a;
                assert_ne!(hash_bytes_extended(&other, PARTITION_SEED), h, "len {len} byte {i}");
            }
        }
    }

    #[test]
    fn remainders_are_unsigned() {
        // Hashes with the top bit set must not go negative before the modulus.
        let spread: Vec<u64> = (0..2000).map(|v| partition(Some(&KeyValue::Int(v)), 3)).collect();
        assert!(spread.iter().all(|&r| r < 3));
        for r in 0..3 {
            assert!(spread.iter().filter(|&&x| x == r).count() > 500, "remainder {r} underused");
        }
    }
}
