//! Frame splitting for tagged protocol messages (everything after startup).
//!
//! A frame is a tag byte, a big-endian i32 length that counts itself but not the tag, and a
//! body. The splitter looks only at headers: it says whether a whole frame sits at the front of a
//! buffer, or, for a frame too large to hold, how many bytes to pass through as they arrive, so a
//! 1 GB DataRow never has to fit in memory. It owns no buffer and does no I/O.

use thiserror::Error;

/// Bytes of a frame header: tag + length.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type '{}'", *tag as char)]
    BadLength { tag: u8, len: i64 },
    #[error("message of type '{}' is {len} bytes, over the limit of {max}", *tag as char)]
    TooLarge { tag: u8, len: usize, max: usize },
}

/// The header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub tag: u8,
    /// Total bytes on the wire, tag included.
    pub total: usize,
}

impl FrameHead {
    /// Reads a header from the first five bytes of `buf`, if present.
    pub fn parse(buf: &[u8], max_total: usize) -> Result<Option<FrameHead>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength { tag, len: len as i64 });
        }
        let total = len as usize + 1;
        if total > max_total {
            return Err(FrameError::TooLarge { tag, len: total, max: max_total });
        }
        Ok(Some(FrameHead { tag, total }))
    }

    /// Body length (without tag and length field).
    pub fn body_len(&self) -> usize {
        self.total - HEADER_LEN
    }
}

/// What the front of a buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not enough bytes yet; the number is how many bytes the buffer should be able to hold to
    /// make progress (for a frame that will be held whole, its total size).
    Need(usize),
    /// A whole frame is at the front of the buffer.
    Whole(FrameHead),
    /// Pass the first `n` bytes through unexamined; `head` is set when they start a large frame.
    Partial { head: Option<FrameHead>, n: usize },
}

/// Splits a byte stream into frames, streaming frames larger than `stream_above`.
#[derive(Clone, Debug)]
pub struct Splitter {
    remaining: usize,
    max_total: usize,
    stream_above: usize,
}

impl Splitter {
    pub fn new(max_total: usize, stream_above: usize) -> Splitter {
        Splitter { remaining: 0, max_total, stream_above }
    }

    /// True while the bytes of a streamed frame are still arriving.
    pub fn mid_frame(&self) -> bool {
        self.remaining > 0
    }

    /// Looks at the front of `buf`. `streamable(tag)` says whether a frame of that type may be
    /// passed through in pieces. After `Whole(h)` the caller consumes `h.total` bytes; after
    /// `Partial { n, .. }` it consumes `n` bytes.
    pub fn next(&mut self, buf: &[u8], streamable: impl Fn(u8) -> bool) -> Result<Step, FrameError> {
        if self.remaining > 0 {
            let n = self.remaining.min(buf.len());
            if n == 0 {
                return Ok(Step::Need(0));
            }
            self.remaining -= n;
            return Ok(Step::Partial { head: None, n });
        }
        let Some(head) = FrameHead::parse(buf, self.max_total)? else {
            return Ok(Step::Need(HEADER_LEN));
        };
        if buf.len() >= head.total {
            return Ok(Step::Whole(head));
        }
        if head.total > self.stream_above && streamable(head.tag) {
            self.remaining = head.total - buf.len();
            return Ok(Step::Partial { head: Some(head), n: buf.len() });
        }
        Ok(Step::Need(head.total))
    }
}

/// Reads a NUL-terminated string at the front of `buf`: (string bytes, rest after the NUL).
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// Appends a frame with the given tag and body.
pub fn put_frame(out: &mut bytes::BytesMut, tag: u8, body: &[u8]) {
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame(&mut b, tag, body);
        b.to_vec()
    }

    #[test]
    fn whole_frames_split_in_order() {
        let mut data = frame(b'Q', b"select 1\0");
        data.extend(frame(b'S', b""));
        let mut s = Splitter::new(1 << 20, 1 << 16);
        let Step::Whole(h) = s.next(&data, |_| true).unwrap() else { panic!() };
        assert_eq!((h.tag, h.total), (b'Q', 14));
        let Step::Whole(h2) = s.next(&data[h.total..], |_| true).unwrap() else { panic!() };
        assert_eq!((h2.tag, h2.total), (b'S', 5));
        assert_eq!(s.next(&data[19..], |_| true).unwrap(), Step::Need(HEADER_LEN));
    }

    #[test]
    fn incomplete_small_frame_asks_for_its_size() {
        let data = frame(b'D', &[7u8; 100]);
        let mut s = Splitter::new(1 << 20, 1 << 16);
        assert_eq!(s.next(&data[..50], |_| true).unwrap(), Step::Need(105));
        assert_eq!(s.next(&data[..3], |_| true).unwrap(), Step::Need(HEADER_LEN));
    }

    #[test]
    fn large_frame_streams_in_pieces() {
        let data = frame(b'D', &vec![1u8; 1000]);
        let mut s = Splitter::new(1 << 20, 100);
        let step = s.next(&data[..300], |t| t == b'D').unwrap();
        assert_eq!(step, Step::Partial { head: Some(FrameHead { tag: b'D', total: 1005 }), n: 300 });
        assert!(s.mid_frame());
        assert_eq!(s.next(&data[300..800], |_| true).unwrap(), Step::Partial { head: None, n: 500 });
        // The rest of the frame plus the start of the next one: only the frame's bytes pass.
        let mut tail = data[800..].to_vec();
        tail.extend(frame(b'Z', b"I"));
        assert_eq!(s.next(&tail, |_| true).unwrap(), Step::Partial { head: None, n: 205 });
        assert!(!s.mid_frame());
        assert!(matches!(s.next(&tail[205..], |_| true).unwrap(), Step::Whole(FrameHead { tag: b'Z', .. })));
    }

    #[test]
    fn unstreamable_large_frame_waits_whole() {
        let data = frame(b'E', &vec![1u8; 1000]);
        let mut s = Splitter::new(1 << 20, 100);
        assert_eq!(s.next(&data[..300], |t| t == b'D').unwrap(), Step::Need(1005));
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let mut s = Splitter::new(1000, 100);
        assert!(matches!(s.next(&[b'Q', 0, 0, 0, 3], |_| true), Err(FrameError::BadLength { .. })));
        assert!(matches!(s.next(&[b'Q', 0xff, 0xff, 0xff, 0xff], |_| true), Err(FrameError::BadLength { .. })));
        assert!(matches!(s.next(&[b'Q', 0, 0, 0x10, 0], |_| true), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn cstr_reads_up_to_nul() {
        assert_eq!(cstr(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(cstr(b"abc"), None);
    }
}
