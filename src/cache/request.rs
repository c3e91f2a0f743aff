//! The requests the cache can answer, read from the front of a client's buffer, and the answers
//! it builds for them. A cacheable request is a simple `Query`, or an extended-protocol batch
//! `[Parse(unnamed)] Bind("" portal) [Describe(portal "")] Execute("", 0 rows) Sync`; anything
//! else (named Parse, Describe of a statement, several Executes, Flush) is left to the server.
//!
//! Pure: no I/O. It never consumes bytes itself; the caller advances by [`Request::len`].

use bytes::BytesMut;

use crate::wire::frame::{cstr, put_frame, FrameHead};
use crate::wire::tag;

/// What the client will expect back, besides the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Query: RowDescription, DataRows, CommandComplete, ReadyForQuery.
    Simple,
    /// Bind..Sync: [ParseComplete] BindComplete [RowDescription | NoData] DataRows
    /// CommandComplete ReadyForQuery.
    Extended { parse: bool, describe: bool },
}

impl Shape {
    /// One byte for the cache key: the response layouts that differ (ParseComplete is added at
    /// replay, so it does not split entries).
    pub fn key_byte(self) -> u8 {
        match self {
            Shape::Simple => b'Q',
            Shape::Extended { describe: true, .. } => b'D',
            Shape::Extended { describe: false, .. } => b'E',
        }
    }
}

/// A cacheable request at the front of the client's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub shape: Shape,
    /// The statement text: the Query's, or the Parse's (None: a Bind of a named statement).
    pub text: Option<&'a [u8]>,
    /// The named statement the Bind uses ("" for the unnamed one).
    pub statement: &'a str,
    /// The Parse's parameter type OIDs as sent (count + OIDs).
    pub types: &'a [u8],
    /// The Bind after its names: parameter formats, values and result formats, as sent.
    pub bind: &'a [u8],
    /// Bytes of the whole request.
    pub len: usize,
}

/// Why the front of the buffer is not a cacheable request.
#[derive(Debug, PartialEq, Eq)]
pub enum NotCacheable {
    /// Not one of the shapes above (or not all here yet).
    Shape,
    /// Execute asks for a row limit (a partial result).
    RowLimit,
}

fn frame_at(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let h = FrameHead::parse(&buf[at..], usize::MAX).ok()??;
    if buf.len() < at + h.total {
        return None;
    }
    Some((h.tag, &buf[at + 5..at + h.total], h.total))
}

/// Reads the request at the front of `buf` (complete messages only).
pub fn parse(buf: &[u8]) -> Result<Request<'_>, NotCacheable> {
    match parse_with_limit(buf)? {
        (r, 0) => Ok(r),
        _ => Err(NotCacheable::RowLimit),
    }
}

/// [`parse`], also for an Execute with a row limit (returned with the request; 0: none).
pub fn parse_with_limit(buf: &[u8]) -> Result<(Request<'_>, u32), NotCacheable> {
    let (t, body, len) = frame_at(buf, 0).ok_or(NotCacheable::Shape)?;
    if t == tag::QUERY {
        let text = body.strip_suffix(&[0]).ok_or(NotCacheable::Shape)?;
        return Ok((Request { shape: Shape::Simple, text: Some(text), statement: "", types: &[], bind: &[], len }, 0));
    }
    let mut at = 0;
    let mut text = None;
    let mut types: &[u8] = &[];
    let (mut t, mut body, mut len) = (t, body, len);
    if t == tag::PARSE {
        let (name, rest) = cstr(body).ok_or(NotCacheable::Shape)?;
        let (query, rest) = cstr(rest).ok_or(NotCacheable::Shape)?;
        if !name.is_empty() {
            return Err(NotCacheable::Shape);
        }
        text = Some(query);
        types = rest;
        at += len;
        (t, body, len) = frame_at(buf, at).ok_or(NotCacheable::Shape)?;
    }
    if t != tag::BIND {
        return Err(NotCacheable::Shape);
    }
    let (portal, rest) = cstr(body).ok_or(NotCacheable::Shape)?;
    let (statement, bind) = cstr(rest).ok_or(NotCacheable::Shape)?;
    let statement = std::str::from_utf8(statement).map_err(|_| NotCacheable::Shape)?;
    if !portal.is_empty() || (text.is_some() && !statement.is_empty()) || (text.is_none() && statement.is_empty()) {
        return Err(NotCacheable::Shape);
    }
    at += len;
    (t, body, len) = frame_at(buf, at).ok_or(NotCacheable::Shape)?;
    let mut describe = false;
    if t == tag::DESCRIBE {
        if body != b"P\0" {
            return Err(NotCacheable::Shape);
        }
        describe = true;
        at += len;
        (t, body, len) = frame_at(buf, at).ok_or(NotCacheable::Shape)?;
    }
    if t != tag::EXECUTE || body.len() != 5 || body[0] != 0 {
        return Err(NotCacheable::Shape);
    }
    let max_rows = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    at += len;
    let (t, _, len) = frame_at(buf, at).ok_or(NotCacheable::Shape)?;
    if t != tag::SYNC {
        return Err(NotCacheable::Shape);
    }
    Ok((
        Request {
            shape: Shape::Extended { parse: text.is_some(), describe },
            text,
            statement,
            types,
            bind,
            len: at + len,
        },
        max_rows,
    ))
}

/// A stored result: the RowDescription frame (when the response had one) and the DataRow
/// frames followed by the CommandComplete frame, byte for byte as the server sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub row_description: Option<bytes::Bytes>,
    pub rows: bytes::Bytes,
}

impl Stored {
    pub fn bytes(&self) -> usize {
        self.row_description.as_ref().map_or(0, |r| r.len()) + self.rows.len()
    }

    /// Serialized for Redis: u32 length of the RowDescription (u32::MAX: none), it, the rows.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.bytes());
        match &self.row_description {
            Some(r) => {
                v.extend_from_slice(&(r.len() as u32).to_be_bytes());
                v.extend_from_slice(r);
            }
            None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
        v.extend_from_slice(&self.rows);
        v
    }

    pub fn decode(v: &[u8]) -> Option<Stored> {
        let n = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
        let rest = &v[4..];
        let (row_description, rows) = if n == u32::MAX {
            (None, rest)
        } else {
            let n = n as usize;
            (Some(bytes::Bytes::copy_from_slice(rest.get(..n)?)), &rest[n..])
        };
        // Every frame must be whole and the last one a CommandComplete.
        let mut at = 0;
        let mut last = 0;
        while at < rows.len() {
            let h = FrameHead::parse(&rows[at..], usize::MAX).ok()??;
            if at + h.total > rows.len() {
                return None;
            }
            last = h.tag;
            at += h.total;
        }
        (last == b'C').then(|| Stored { row_description, rows: bytes::Bytes::copy_from_slice(rows) })
    }
}

/// Writes the answer to a request of `shape` from a stored result (ReadyForQuery idle: the
/// cache answers only outside transaction blocks).
pub fn respond(out: &mut BytesMut, shape: Shape, stored: &Stored) {
    if let Shape::Extended { parse, describe } = shape {
        if parse {
            put_frame(out, b'1', b"");
        }
        put_frame(out, b'2', b"");
        if describe {
            match &stored.row_description {
                Some(r) => out.extend_from_slice(r),
                None => put_frame(out, b'n', b""),
            }
        }
    } else if let Some(r) = &stored.row_description {
        out.extend_from_slice(r);
    }
    out.extend_from_slice(&stored.rows);
    put_frame(out, b'Z', b"I");
}

/// Collects a response while it streams to the client, up to `max` bytes, for the request's
/// shape. Stops at the first ReadyForQuery.
#[derive(Debug)]
pub struct Tee {
    pub shape: Shape,
    max: usize,
    row_description: Option<bytes::Bytes>,
    rows: BytesMut,
    complete: bool,
    /// Why it will not be stored, once known.
    pub failed: Option<super::analyze::Refusal>,
}

/// What a frame did to a [`Tee`].
#[derive(Debug, PartialEq, Eq)]
pub enum TeeStep {
    More,
    /// The response ended: store this, or (None) nothing.
    Done(Option<Stored>),
}

impl Tee {
    pub fn new(shape: Shape, max: usize) -> Tee {
        Tee { shape, max, row_description: None, rows: BytesMut::new(), complete: false, failed: None }
    }

    /// One whole frame as forwarded to the client.
    pub fn frame(&mut self, t: u8, frame: &[u8]) -> TeeStep {
        use super::analyze::Refusal;
        if self.failed.is_none() {
            match t {
                b'1' | b'2' | b'n' | b't' if matches!(self.shape, Shape::Extended { .. }) => {}
                b'T' if self.row_description.is_none() && self.rows.is_empty() => {
                    self.row_description = Some(bytes::Bytes::copy_from_slice(frame))
                }
                b'D' if !self.complete => self.rows.extend_from_slice(frame),
                b'C' if !self.complete => {
                    self.rows.extend_from_slice(frame);
                    self.complete = true;
                }
                b'Z' => {}
                _ => self.failed = Some(Refusal::NotAResult),
            }
            if self.rows.len() + self.row_description.as_ref().map_or(0, |r| r.len()) > self.max {
                self.failed = Some(Refusal::TooLarge);
                self.rows = BytesMut::new();
            }
        }
        if t != b'Z' {
            return TeeStep::More;
        }
        let idle = frame.get(5) == Some(&b'I');
        if self.failed.is_none() && (!self.complete || !idle) {
            self.failed = Some(Refusal::NotAResult);
        }
        if self.failed.is_some() {
            return TeeStep::Done(None);
        }
        TeeStep::Done(Some(Stored {
            row_description: self.row_description.take(),
            rows: std::mem::take(&mut self.rows).freeze(),
        }))
    }

    /// A frame too large to hold passed through in pieces: not stored.
    pub fn streamed(&mut self) {
        self.failed.get_or_insert(super::analyze::Refusal::TooLarge);
        self.rows = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame(&mut b, t, body);
        b.to_vec()
    }

    fn bind(stmt: &str) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(stmt.as_bytes());
        body.push(0);
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        msg(b'B', &body)
    }

    #[test]
    fn simple_and_extended_requests() {
        let q = msg(b'Q', b"select 1\0");
        let r = parse(&q).unwrap();
        assert_eq!((r.shape, r.text, r.len), (Shape::Simple, Some(&b"select 1"[..]), q.len()));

        let mut ext = msg(b'P', b"\0select $1\0\0\x01\0\0\0\x17");
        ext.extend(bind(""));
        ext.extend(msg(b'D', b"P\0"));
        ext.extend(msg(b'E', b"\0\0\0\0\0"));
        ext.extend(msg(b'S', b""));
        ext.extend(msg(b'Q', b"next\0"));
        let r = parse(&ext).unwrap();
        assert_eq!(r.shape, Shape::Extended { parse: true, describe: true });
        assert_eq!(r.text, Some(&b"select $1"[..]));
        assert_eq!(r.types, b"\0\x01\0\0\0\x17");
        assert_eq!(r.bind, &[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        assert_eq!(r.len, ext.len() - msg(b'Q', b"next\0").len());

        let mut named = bind("s1");
        named.extend(msg(b'E', b"\0\0\0\0\0"));
        named.extend(msg(b'S', b""));
        let r = parse(&named).unwrap();
        assert_eq!((r.shape, r.text, r.statement), (Shape::Extended { parse: false, describe: false }, None, "s1"));
    }

    #[test]
    fn other_shapes_are_left_alone() {
        let mut limited = bind("s1");
        limited.extend(msg(b'E', b"\0\0\0\0\x0a"));
        limited.extend(msg(b'S', b""));
        assert_eq!(parse(&limited), Err(NotCacheable::RowLimit));
        let mut unfinished = bind("s1");
        unfinished.extend(msg(b'E', b"\0\0\0\0\0"));
        assert_eq!(parse(&unfinished), Err(NotCacheable::Shape));
        let mut named_parse = msg(b'P', b"n\0select 1\0\0\0");
        named_parse.extend(bind("n"));
        assert_eq!(parse(&named_parse), Err(NotCacheable::Shape));
        let mut flush = bind("s1");
        flush.extend(msg(b'H', b""));
        assert_eq!(parse(&flush), Err(NotCacheable::Shape));
        assert_eq!(parse(&msg(b'Q', b"select 1")[..8]), Err(NotCacheable::Shape));
    }

    #[test]
    fn tee_stores_rows_and_replays_them_for_each_shape() {
        let t = msg(b'T', b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0");
        let d = msg(b'D', b"\0\x01\0\0\0\x011");
        let c = msg(b'C', b"SELECT 1\0");
        let mut tee = Tee::new(Shape::Simple, 1 << 20);
        for f in [&t, &d, &c] {
            assert_eq!(tee.frame(f[0], f), TeeStep::More);
        }
        let TeeStep::Done(Some(stored)) = tee.frame(b'Z', &msg(b'Z', b"I")) else { panic!("not stored") };
        let mut out = BytesMut::new();
        respond(&mut out, Shape::Simple, &stored);
        assert_eq!(out.to_vec(), [t.clone(), d.clone(), c.clone(), msg(b'Z', b"I")].concat());
        assert_eq!(Stored::decode(&stored.encode()), Some(stored.clone()));

        let mut out = BytesMut::new();
        respond(&mut out, Shape::Extended { parse: true, describe: true }, &stored);
        assert_eq!(out.to_vec(), [msg(b'1', b""), msg(b'2', b""), t, d, c, msg(b'Z', b"I")].concat());
    }

    #[test]
    fn tee_refuses_errors_notices_size_and_transactions() {
        let c = msg(b'C', b"SELECT 0\0");
        let mut tee = Tee::new(Shape::Simple, 1 << 20);
        tee.frame(b'N', &msg(b'N', b"SWARNING\0\0"));
        tee.frame(b'C', &c);
        assert_eq!(tee.frame(b'Z', &msg(b'Z', b"I")), TeeStep::Done(None));
        let mut tee = Tee::new(Shape::Simple, 1 << 20);
        tee.frame(b'C', &c);
        assert_eq!(tee.frame(b'Z', &msg(b'Z', b"T")), TeeStep::Done(None));
        let mut tee = Tee::new(Shape::Simple, 4);
        tee.frame(b'C', &c);
        assert_eq!(tee.failed, Some(crate::cache::analyze::Refusal::TooLarge));
        assert_eq!(Stored::decode(b"\xff\xff\xff\xffjunk"), None);
    }
}
