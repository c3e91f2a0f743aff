//! Cache keys: a SHA-256 over everything that can change a result's bytes: database, user, the
//! session's settings (search_path, TimeZone, DateStyle, extra_float_digits, custom GUCs such as
//! those RLS policies read ...), the response shape, the statement text, parameter types, the
//! Bind's formats and values, and the current version token of every table read. Each field is
//! length-prefixed, so no two inputs share an encoding. Pure.

use sha2::{Digest, Sha256};

pub type Key = [u8; 32];

/// The parts of a key that come from the request and the session.
pub struct KeyInput<'a> {
    pub database: &'a str,
    pub user: &'a str,
    /// (name, value) pairs, sorted by name.
    pub settings: &'a [(String, String)],
    pub shape: u8,
    pub text: &'a [u8],
    pub types: &'a [u8],
    pub bind: &'a [u8],
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The key for `input` with these table versions (in the order of the tables read, then the
/// database-wide token).
pub fn derive(input: &KeyInput<'_>, versions: &[String]) -> Key {
    let mut h = Sha256::new();
    h.update(b"pgweir-cache-v1");
    field(&mut h, input.database.as_bytes());
    field(&mut h, input.user.as_bytes());
    h.update((input.settings.len() as u64).to_be_bytes());
    for (k, v) in input.settings {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    h.update([input.shape]);
    field(&mut h, input.text);
    field(&mut h, input.types);
    field(&mut h, input.bind);
    h.update((versions.len() as u64).to_be_bytes());
    for v in versions {
        field(&mut h, v.as_bytes());
    }
    h.finalize().into()
}

pub fn hex(key: &Key) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(settings: &'a [(String, String)], text: &'a [u8], bind: &'a [u8]) -> KeyInput<'a> {
        KeyInput { database: "db", user: "alice", settings, shape: b'Q', text, types: b"", bind }
    }

    #[test]
    fn every_part_changes_the_key() {
        let s = vec![("TimeZone".to_string(), "UTC".to_string())];
        let base = derive(&input(&s, b"select 1", b""), &["v1".into()]);
        assert_eq!(base, derive(&input(&s, b"select 1", b""), &["v1".into()]));
        assert_ne!(base, derive(&input(&s, b"select 2", b""), &["v1".into()]));
        assert_ne!(base, derive(&input(&s, b"select 1", b"\0"), &["v1".into()]));
        assert_ne!(base, derive(&input(&s, b"select 1", b""), &["v2".into()]));
        let tz = vec![("TimeZone".to_string(), "Asia/Tokyo".to_string())];
        assert_ne!(base, derive(&input(&tz, b"select 1", b""), &["v1".into()]));
        let mut other_user = input(&s, b"select 1", b"");
        other_user.user = "bob";
        assert_ne!(base, derive(&other_user, &["v1".into()]));
        let mut other_shape = input(&s, b"select 1", b"");
        other_shape.shape = b'D';
        assert_ne!(base, derive(&other_shape, &["v1".into()]));
        // Length prefixes: moving bytes between fields changes the key.
        let a = vec![("ab".to_string(), "c".to_string())];
        let b = vec![("a".to_string(), "bc".to_string())];
        assert_ne!(derive(&input(&a, b"x", b""), &[]), derive(&input(&b, b"x", b""), &[]));
    }
}
