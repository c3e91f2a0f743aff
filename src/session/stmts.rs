//! Named prepared statements in transaction mode. A client's statement names are mapped to
//! global names derived from (text, parameter types, search_path), so the same statement
//! prepared by many clients is one server-side statement, prepared lazily on whichever server a
//! client is given. This module holds a client's map (bounded by count and bytes) and reads and
//! rewrites the Parse/Bind/Describe/Close messages. Pure: no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::wire::frame::{cstr, put_frame};
use crate::wire::{tag, PgError, SqlState};

/// One statement as the server must be asked to prepare it.
#[derive(Debug)]
pub struct StatementDef {
    pub global: Arc<str>,
    /// A complete Parse frame naming `global`.
    pub parse_frame: Bytes,
    /// What executing it does to session state.
    pub effects: Vec<crate::route::session_sql::Effect>,
    /// It may run on a replica.
    pub read: bool,
    /// Its fingerprint and literal-free text (when request timing is on).
    pub shape: Option<super::timing::Shape>,
}

/// A client's statements: its name → the shared definition.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<String, Arc<StatementDef>>,
    bytes: usize,
    pub max_count: usize,
    pub max_bytes: usize,
}

impl ClientStatements {
    pub fn new(max_count: usize, max_bytes: usize) -> ClientStatements {
        ClientStatements { map: HashMap::new(), bytes: 0, max_count, max_bytes }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<StatementDef>> {
        self.map.get(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of statement text held for this client.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn define(&mut self, name: &str, def: Arc<StatementDef>) -> Result<(), PgError> {
        if self.map.contains_key(name) {
            return Err(PgError::error(SqlState("42P05"), format!("prepared statement \"{name}\" already exists")));
        }
        if self.map.len() >= self.max_count {
            return Err(PgError::error(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!("pgweir: this session already has {} prepared statements (limit)", self.map.len()),
            )
            .with_hint("close unused statements, or raise prepared.max_per_client"));
        }
        let size = def.parse_frame.len();
        if self.bytes + size > self.max_bytes {
            return Err(PgError::error(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!("pgweir: this session's prepared statements would exceed {} bytes", self.max_bytes),
            )
            .with_hint("close unused statements, or raise prepared.max_bytes_per_client"));
        }
        self.bytes += size;
        self.map.insert(name.to_string(), def);
        Ok(())
    }

    /// Forgets a name (Close, a failed Parse). Unknown names are fine, as in PostgreSQL.
    pub fn remove(&mut self, name: &str) {
        if let Some(d) = self.map.remove(name) {
            self.bytes -= d.parse_frame.len();
        }
    }

    /// Forgets `name` only if it still means `global` (a later Parse may have reused it).
    pub fn remove_if(&mut self, name: &str, global: &str) {
        if self.map.get(name).is_some_and(|d| &*d.global == global) {
            self.remove(name);
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// The parts of a Parse message.
pub struct Parse<'a> {
    pub name: &'a str,
    pub query: &'a [u8],
    /// The raw parameter-count and type-OID bytes.
    pub types: &'a [u8],
}

pub fn parse_parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(body)?;
    let (query, types) = cstr(rest)?;
    Some(Parse { name: std::str::from_utf8(name).ok()?, query, types })
}

/// The global name for a statement: "pgweir_" + 128 bits of SHA-256 over its text, parameter
/// types and search_path (the same text can mean another table under another search_path).
pub fn global_name(query: &[u8], types: &[u8], search_path: &str) -> Arc<str> {
    let mut h = Sha256::new();
    h.update(query);
    h.update([0]);
    h.update(types);
    h.update([0]);
    h.update(search_path.as_bytes());
    let d = h.finalize();
    let mut s = String::with_capacity(7 + 32);
    s.push_str("pgweir_");
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.into()
}

/// A Parse frame for `global` with the client's text and types.
pub fn parse_frame(global: &str, query: &[u8], types: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(global.len() + query.len() + types.len() + 2);
    body.extend_from_slice(global.as_bytes());
    body.push(0);
    body.extend_from_slice(query);
    body.push(0);
    body.extend_from_slice(types);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    put_frame(&mut out, tag::PARSE, &body);
    out.freeze()
}

/// Close of a server-side statement.
pub fn close_statement_frame(global: &str) -> Bytes {
    let mut body = Vec::with_capacity(global.len() + 2);
    body.push(b'S');
    body.extend_from_slice(global.as_bytes());
    body.push(0);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    put_frame(&mut out, tag::CLOSE, &body);
    out.freeze()
}

/// Bind's portal and statement names and where the rest of the body starts.
pub fn parse_bind_names(body: &[u8]) -> Option<(&str, &str, usize)> {
    let (portal, rest) = cstr(body)?;
    let (stmt, _) = cstr(rest)?;
    let rest_at = portal.len() + 1 + stmt.len() + 1;
    Some((std::str::from_utf8(portal).ok()?, std::str::from_utf8(stmt).ok()?, rest_at))
}

/// Writes the header and name prefix of a Bind whose statement is renamed to `global`;
/// `total` is the original frame's length (tag included). The caller appends the original
/// bytes from `rest_at` (relative to the body) onwards.
pub fn put_bind_prefix(out: &mut BytesMut, total: usize, portal: &str, stmt_len: usize, global: &str) {
    let body_len = total - 5 - stmt_len + global.len();
    out.put_u8(tag::BIND);
    out.put_i32((body_len + 4) as i32);
    out.extend_from_slice(portal.as_bytes());
    out.put_u8(0);
    out.extend_from_slice(global.as_bytes());
    out.put_u8(0);
}

/// Describe or Close: ('S' or 'P', name).
pub fn parse_target(body: &[u8]) -> Option<(u8, &str)> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, std::str::from_utf8(name).ok()?))
}

/// Describe or Close frame with a new name.
pub fn target_frame(t: u8, kind: u8, name: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(kind);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    let mut out = BytesMut::with_capacity(body.len() + 5);
    put_frame(&mut out, t, &body);
    out.freeze()
}

/// ParseComplete / CloseComplete the proxy answers itself.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_names_depend_on_text_types_and_search_path() {
        let a = global_name(b"select $1", b"\0\x01\0\0\0\x17", "public");
        assert_eq!(a.len(), 39);
        assert!(a.starts_with("pgweir_"));
        assert_eq!(a, global_name(b"select $1", b"\0\x01\0\0\0\x17", "public"));
        assert_ne!(a, global_name(b"select $1", b"\0\x01\0\0\0\x14", "public"));
        assert_ne!(a, global_name(b"select $1", b"\0\x01\0\0\0\x17", "s1"));
        assert_ne!(a, global_name(b"select $2", b"\0\x01\0\0\0\x17", "public"));
    }

    #[test]
    fn parse_round_trip_and_rename() {
        let f = parse_frame("s1", b"select 1", b"\0\0");
        let p = parse_parse(&f[5..]).unwrap();
        assert_eq!((p.name, p.query, p.types), ("s1", &b"select 1"[..], &b"\0\0"[..]));
        assert!(parse_parse(b"no-nul").is_none());
    }

    #[test]
    fn bind_prefix_rewrite_keeps_the_rest() {
        let mut body = b"p1\0s1\0".to_vec();
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        let mut orig = BytesMut::new();
        put_frame(&mut orig, tag::BIND, &body);
        let (portal, stmt, rest_at) = parse_bind_names(&orig[5..]).unwrap();
        assert_eq!((portal, stmt), ("p1", "s1"));
        let mut out = BytesMut::new();
        put_bind_prefix(&mut out, orig.len(), portal, stmt.len(), "pgweir_x");
        out.extend_from_slice(&orig[5 + rest_at..]);
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(parse_bind_names(&out[5..]).unwrap().1, "pgweir_x");
        assert!(out.ends_with(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]));
    }

    #[test]
    fn limits_and_duplicates() {
        let def = |g: &str| {
            Arc::new(StatementDef {
                global: g.into(),
                parse_frame: parse_frame(g, b"select 1", b"\0\0"),
                effects: vec![],
                read: false,
                shape: None,
            })
        };
        let mut c = ClientStatements::new(2, 1 << 20);
        c.define("a", def("g1")).unwrap();
        assert_eq!(c.define("a", def("g1")).unwrap_err().code.code(), "42P05");
        c.define("b", def("g2")).unwrap();
        assert_eq!(c.define("c", def("g3")).unwrap_err().code.code(), "54000");
        c.remove("a");
        c.define("c", def("g3")).unwrap();
        c.remove_if("c", "other");
        assert!(c.get("c").is_some());
        c.remove_if("c", "g3");
        assert!(c.get("c").is_none());
        let mut small = ClientStatements::new(10, 10);
        assert_eq!(small.define("a", def("g1")).unwrap_err().code.code(), "54000");
        assert_eq!(small.bytes(), 0);
    }

    #[test]
    fn targets() {
        let f = target_frame(tag::DESCRIBE, b'S', "g");
        assert_eq!(parse_target(&f[5..]), Some((b'S', "g")));
        assert_eq!(parse_target(b""), None);
    }
}
