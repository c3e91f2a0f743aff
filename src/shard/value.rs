//! Shard key types and values: a key as written in SQL (a literal, quoted or not) or sent as a
//! Bind parameter (text or binary format) becomes a [`KeyValue`] of the column's type, the form
//! the hash, range and list functions read. Pure: no I/O.

use super::hash::KeyValue;

/// The shard key column's type (what the hash function depends on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    SmallInt,
    Integer,
    BigInt,
    Text,
    Uuid,
}

impl KeyType {
    pub fn parse(s: &str) -> Result<KeyType, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "smallint" | "int2" => KeyType::SmallInt,
            "integer" | "int" | "int4" => KeyType::Integer,
            "bigint" | "int8" => KeyType::BigInt,
            "text" | "varchar" | "character varying" => KeyType::Text,
            "uuid" => KeyType::Uuid,
            other => {
                return Err(format!(
                    "unsupported shard key type \"{other}\": use smallint, integer, bigint, text, varchar or uuid"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyType::SmallInt => "smallint",
            KeyType::Integer => "integer",
            KeyType::BigInt => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }

    /// A value in PostgreSQL's text form (a literal's content, or a text-format parameter).
    pub fn from_text(self, s: &str) -> Result<KeyValue, String> {
        let bad = || format!("invalid input syntax for type {}: \"{s}\"", self.name());
        match self {
            KeyType::SmallInt | KeyType::Integer | KeyType::BigInt => {
                let v: i64 = s.trim().parse().map_err(|_| bad())?;
                let (lo, hi) = match self {
                    KeyType::SmallInt => (i16::MIN as i64, i16::MAX as i64),
                    KeyType::Integer => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if v < lo || v > hi {
                    return Err(format!("value \"{s}\" is out of range for type {}", self.name()));
                }
                Ok(KeyValue::Int(v))
            }
            KeyType::Text => Ok(KeyValue::Text(s.as_bytes().to_vec())),
            KeyType::Uuid => parse_uuid(s).map(KeyValue::Uuid).ok_or_else(bad),
        }
    }

    /// A binary-format parameter (the type's send format).
    pub fn from_binary(self, b: &[u8]) -> Result<KeyValue, String> {
        let bad = || format!("binary parameter of {} bytes is not a {}", b.len(), self.name());
        Ok(match (self, b.len()) {
            (KeyType::SmallInt | KeyType::Integer | KeyType::BigInt, 2) => {
                KeyValue::Int(i16::from_be_bytes([b[0], b[1]]) as i64)
            }
            (KeyType::SmallInt | KeyType::Integer | KeyType::BigInt, 4) => {
                KeyValue::Int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64)
            }
            (KeyType::BigInt | KeyType::Integer | KeyType::SmallInt, 8) => {
                let v = i64::from_be_bytes(b.try_into().map_err(|_| bad())?);
                return self.from_text(&v.to_string());
            }
            (KeyType::Text, _) => KeyValue::Text(b.to_vec()),
            (KeyType::Uuid, 16) => KeyValue::Uuid(b.try_into().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }
}

/// PostgreSQL's uuid input: 32 hex digits, optionally in braces, with a hyphen allowed after
/// any group of four digits.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = match s.strip_prefix('{') {
        Some(inner) => inner.strip_suffix('}')?,
        None => s,
    };
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut since_hyphen = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' {
            if n == 0 || since_hyphen % 4 != 0 || chars.peek().is_none() {
                return None;
            }
            continue;
        }
        let d = c.to_digit(16)? as u8;
        if n >= 32 {
            return None;
        }
        out[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
        n += 1;
        since_hyphen += 1;
    }
    (n == 32).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_check_their_range() {
        assert_eq!(KeyType::Integer.from_text(" 42 "), Ok(KeyValue::Int(42)));
        assert!(KeyType::SmallInt.from_text("40000").unwrap_err().contains("out of range"));
        assert!(KeyType::BigInt.from_text("4x").unwrap_err().contains("invalid input syntax"));
        assert_eq!(KeyType::BigInt.from_binary(&7i64.to_be_bytes()), Ok(KeyValue::Int(7)));
        assert_eq!(KeyType::BigInt.from_binary(&(-7i32).to_be_bytes()), Ok(KeyValue::Int(-7)));
        assert!(KeyType::Integer.from_binary(&[1, 2, 3]).is_err());
    }

    #[test]
    fn uuids_in_postgres_forms() {
        let canonical = KeyType::Uuid.from_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(KeyType::Uuid.from_text(form).as_ref(), Ok(&canonical), "{form}");
        }
        for bad in ["a0eebc99", "-a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"] {
            assert!(KeyType::Uuid.from_text(bad).is_err(), "{bad}");
        }
    }
}
