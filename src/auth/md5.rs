//! MD5 password authentication as PostgreSQL does it: the stored "md5" + hex form, the salted
//! response a client sends for AuthenticationMD5Password, and the server-side check.
//!
//! Pure logic: no I/O, no async, no logging. It must never compare secrets in variable time and never
//! accept a stored value that is not a valid "md5" + 32 lowercase hex digits hash.

use ::md5::{Digest, Md5};

/// Length of "md5" + 32 hex digits.
const MD5_PASSWD_LEN: usize = 35;

/// "md5" + hex(md5(password || user)), PostgreSQL's stored form.
pub fn md5_stored(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// What a client sends for AuthenticationMD5Password(salt): "md5" + hex(md5(hex_part_of_stored || salt)).
/// `stored` is normally an "md5..." value; without the prefix it is used as the hex part as given.
pub fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let hex_part = stored.strip_prefix("md5").unwrap_or(stored);
    md5_hex(&[hex_part.as_bytes(), &salt])
}

/// Server-side check of a client's PasswordMessage (without its trailing NUL) against a stored "md5..."
/// value (constant-time). False when `stored` is not an MD5 hash (e.g. a SCRAM verifier).
pub fn md5_verify(stored: &str, salt: [u8; 4], client_response: &str) -> bool {
    if !is_md5_stored(stored) {
        return false;
    }
    ct_eq(md5_response(stored, salt).as_bytes(), client_response.as_bytes())
}

/// Whether `stored` has PostgreSQL's MD5 form ("md5" + 32 lowercase hex digits).
pub fn is_md5_stored(stored: &str) -> bool {
    stored.len() == MD5_PASSWD_LEN
        && stored.starts_with("md5")
        && stored.bytes().skip(3).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh random salt for AuthenticationMD5Password.
pub fn random_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::fill(&mut salt[..]);
    salt
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = String::with_capacity(MD5_PASSWD_LEN);
    out.push_str("md5");
    for b in hasher.finalize() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

/// Constant-time equality (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed by PostgreSQL 15: select 'md5' || md5('pass' || 'user');
    const STORED: &str = "md57f409a7c046daea1c2c60502d7e2becc";

    #[test]
    fn stored_matches_postgres() {
        assert_eq!(md5_stored("user", "pass"), STORED);
        assert!(is_md5_stored(STORED));
    }

    #[test]
    fn response_matches_postgres() {
        // select 'md5' || md5(convert_to(md5('pass' || 'user'), 'UTF8') || '\x01020304'::bytea);
        assert_eq!(md5_response(STORED, [1, 2, 3, 4]), "md56cf524962d8413e6b0cdf79fddff891c");
        assert_eq!(md5_response(STORED, [0xff, 0xfe, 0x00, 0x80]), "md5479036e9b7cb1ccc22408c12d60d561d");
        assert_eq!(md5_response(&STORED[3..], [1, 2, 3, 4]), "md56cf524962d8413e6b0cdf79fddff891c");
    }

    #[test]
    fn verify() {
        let salt = [9, 8, 7, 6];
        let good = md5_response(STORED, salt);
        assert!(md5_verify(STORED, salt, &good));
        assert!(!md5_verify(STORED, [9, 8, 7, 5], &good));
        assert!(!md5_verify(STORED, salt, &md5_response(&md5_stored("user", "Pass"), salt)));
        assert!(!md5_verify(STORED, salt, &good.to_uppercase()));
        assert!(!md5_verify(STORED, salt, &good[..34]));
        assert!(!md5_verify(STORED, salt, ""));
        // Not an MD5 hash: never verifies, whatever the client sends.
        for stored in ["", "md5", "pass", "MD57F409A7C046DAEA1C2C60502D7E2BECC", "md57f409a7c046daea1c2c60502d7e2becz"]
        {
            assert!(!md5_verify(stored, salt, &md5_response(stored, salt)), "{stored}");
        }
        let scram = "SCRAM-SHA-256$4096:5Ts6zMRVLo9oiyqi1B1T2Q==$l8dmp/mdpxgtumrSwcYnw7A3SQ8brBkaXLHNgq5+49A=:viFam2u6d2MCqwOvxMOPs7u52X+wFen3CmyY+FbJhtA=";
        assert!(!md5_verify(scram, salt, &md5_response(scram, salt)));
    }

    #[test]
    fn random_salts_differ() {
        let salts: Vec<[u8; 4]> = (0..8).map(|_| random_salt()).collect();
        assert!(salts.windows(2).any(|w| w[0] != w[1]));
    }
}
