//! Properties of the parsers that face untrusted bytes, stated once and checked two ways: by the
//! `cargo fuzz` targets in `fuzz/` (feature `props`) and by bounded proptest runs in the normal
//! test suite. Each function takes arbitrary input and panics when a property fails; none may
//! panic otherwise, whatever the input.
//!
//! - [`frames`]: the frame splitter over any byte stream, fed in any chunking.
//! - [`startup`]: startup packets, `options`, and the authentication messages after them.
//! - [`classifier`]: statement classification, fingerprints and the shape caches built on them.

use bytes::BytesMut;

use crate::auth::scram::{ScramSecret, ScramServer, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use crate::route::cache::{fingerprint, fingerprint_into, without_literals, ClassifyCache};
use crate::route::classify::{classify, hint, leading_comments, pgweir_items, Classification};
use crate::route::skeleton::Skeleton;
use crate::wire::backend::{parse_password, parse_sasl_initial, AuthRequest, ErrorFields};
use crate::wire::frame::{put_frame, FrameHead, Splitter, Step, HEADER_LEN};
use crate::wire::startup::{encode_startup, parse_initial, parse_options, InitialPacket, MAX_STARTUP_PACKET};

/// Splits `data` twice, whole and fed in pieces of `chunk` bytes, with limits taken from `knobs`:
/// every frame held whole starts at a frame boundary, re-encodes to the same bytes, and both
/// feedings see the same frames; streamed pieces never overrun the buffer; no input panics.
pub fn frames(knobs: u16, chunk: u8, data: &[u8]) {
    let max_total = 5 + usize::from(knobs >> 4) * 64;
    let stream_above = 5 + usize::from(knobs & 0xf) * 16;
    let streamable = |tag: u8| tag == b'D' || tag == b'd';
    let whole = split(max_total, stream_above, data, data.len().max(1), &streamable);
    let pieces = split(max_total, stream_above, data, usize::from(chunk).max(1), &streamable);
    assert_eq!(whole, pieces, "chunking changed the frames");
}

/// The frames (tag, bytes) and streamed byte counts a splitter yields for `data` arriving
/// `chunk` bytes at a time, ending at the first error.
fn split(
    max_total: usize,
    stream_above: usize,
    data: &[u8],
    chunk: usize,
    streamable: &impl Fn(u8) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    let mut splitter = Splitter::new(max_total, stream_above);
    let (mut buf, mut fed, mut out) = (Vec::new(), 0, Vec::new());
    let mut streamed: Option<(u8, Vec<u8>)> = None;
    loop {
        match splitter.next(&buf, streamable) {
            Err(_) => return out,
            Ok(Step::Whole(head)) => {
                assert!(head.total >= HEADER_LEN && head.total <= buf.len() && head.total <= max_total);
                assert_eq!(head.tag, buf[0]);
                let mut again = BytesMut::new();
                put_frame(&mut again, head.tag, &buf[HEADER_LEN..head.total]);
                assert_eq!(&again[..], &buf[..head.total], "a frame re-encodes to its bytes");
                out.push((head.tag, buf.drain(..head.total).collect()));
            }
            Ok(Step::Partial { head, n }) => {
                assert!(n > 0 && n <= buf.len());
                if let Some(h) = head {
                    assert!(h.total > stream_above && streamable(h.tag) && h.total <= max_total);
                    streamed = Some((h.tag, Vec::new()));
                }
                let piece = streamed.as_mut().expect("a piece belongs to a streamed frame");
                piece.1.extend(buf.drain(..n));
                if !splitter.mid_frame() {
                    out.extend(streamed.take());
                }
            }
            Ok(Step::Need(n)) => {
                assert!(n > buf.len() || (n == 0 && buf.is_empty()), "Need({n}) with {} bytes", buf.len());
                if fed == data.len() {
                    return out;
                }
                let take = chunk.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + take]);
                fed += take;
            }
        }
    }
}

/// Any startup-phase packet parses or fails cleanly; a StartupMessage re-encodes to a packet
/// that parses to the same parameters; `options` and the authentication replies (password,
/// SASL, SCRAM messages) reject garbage without panicking, and a mock SCRAM exchange never
/// succeeds.
pub fn startup(data: &[u8]) {
    match parse_initial(data) {
        Ok(Some((packet, used))) => {
            assert!((8..=MAX_STARTUP_PACKET).contains(&used) && used <= data.len());
            if let InitialPacket::Startup(msg) = packet {
                if let Some(options) = msg.get("options") {
                    let _ = parse_options(options);
                }
                if msg.minor == 0
                    && msg.params.iter().all(|(k, v)| !k.is_empty() && !k.contains('\0') && !v.contains('\0'))
                {
                    let params: Vec<(&str, &str)> = msg.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let mut again = BytesMut::new();
                    encode_startup(&params, &mut again);
                    if again.len() <= MAX_STARTUP_PACKET {
                        let Ok(Some((InitialPacket::Startup(back), _))) = parse_initial(&again) else {
                            panic!("a re-encoded startup packet does not parse");
                        };
                        assert_eq!(back.params, msg.params);
                    }
                }
            }
        }
        Ok(None) => assert!(data.len() < 4 || data.len() < u32::from_be_bytes(data[..4].try_into().unwrap()) as usize),
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_options(text);
    }
    let _ = (parse_password(data), AuthRequest::parse(data), ErrorFields::parse(data), FrameHead::parse(data, 1 << 20));
    let secret = ScramSecret::from_password("pw", &[7; 16], 1);
    let (mechanism, first) = parse_sasl_initial(data).unwrap_or_else(|| (SCRAM_SHA_256.to_owned(), data.to_vec()));
    for (mock, binding) in [(true, false), (false, true)] {
        let mut server = ScramServer::new(secret.clone(), mock);
        if binding {
            server = server.with_channel_binding(vec![1; 32]);
        }
        let mechanism = if binding && mechanism != SCRAM_SHA_256 { SCRAM_SHA_256_PLUS } else { mechanism.as_str() };
        if server.client_first(mechanism, &first).is_ok() {
            let finished = server.client_final(data);
            assert!(!mock || finished.is_err(), "a mock exchange succeeded");
        }
    }
}

/// Classification never panics and the caches never change an answer. `data` is one text, or
/// two separated by a NUL; with one, the other is the same text with its literals changed.
pub fn classifier(data: &[u8]) {
    let (sql, other) = match data.iter().position(|&b| b == 0) {
        Some(at) => (String::from_utf8_lossy(&data[..at]), String::from_utf8_lossy(&data[at + 1..]).into_owned()),
        None => {
            let sql = String::from_utf8_lossy(data);
            let other = other_literals(&sql);
            (sql, other)
        }
    };
    same_answers(&sql, &other);
}

/// Both texts classify without panicking and the caches never change an answer: a text
/// classified through a [`ClassifyCache`] warmed with the other gets its cold classification;
/// a text matching the other's [`Skeleton`] (the same tokens up to literal values) has the
/// other's fingerprint and classification. Each text is classified in full once (the cache
/// only answers texts with the same key, so it is asked only then).
pub fn same_answers(a: &str, b: &str) {
    let (cold_a, cold_b) = (classify(a, &[]), classify(b, &[]));
    let (mut key_a, mut key_b, mut lit_a, mut lit_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (fp_a, fp_b) = (fingerprint_into(a, &mut key_a, &mut lit_a), fingerprint_into(b, &mut key_b, &mut lit_b));
    assert_eq!((fp_a, fp_b), (fingerprint(a), fingerprint(b)));
    for (sql, cold, other, key, other_key, other_literals, other_fp, other_cold) in
        [(a, &cold_a, b, &key_a, &key_b, &lit_b, fp_b, &cold_b), (b, &cold_b, a, &key_b, &key_a, &lit_a, fp_a, &cold_a)]
    {
        let _ = (hint(sql), leading_comments(sql), pgweir_items(sql));
        assert!(without_literals(sql, 64).len() <= 64, "without_literals overran its bound");
        if key == other_key {
            let mut cache = ClassifyCache::new(16);
            cache.classify(other, &[]);
            let warm = cache.classify(sql, &[]);
            let ok = &warm == cold || malformed_literal(&warm, cold);
            assert!(ok, "the warm cache changed the answer for {sql:?} after {other:?}: {warm:?} / {cold:?}");
        }
        let mut matched = Vec::new();
        if let Some(skeleton) = Skeleton::new(other, other_literals) {
            if skeleton.matches(sql, &mut matched) {
                assert_eq!(fingerprint(sql), other_fp, "same skeleton, other fingerprint: {sql:?} / {other:?}");
                let ok = cold == other_cold || malformed_literal(cold, other_cold);
                assert!(ok, "same skeleton, other route: {sql:?} / {other:?}: {cold:?} / {other_cold:?}");
            }
        }
    }
}

/// Texts with the same tokens may still differ in whether a literal's contents are valid (an
/// `E'\\u@'` escape, say): the parser rejects one, and a cache may answer it as the valid
/// one. PostgreSQL rejects such a text before running anything, wherever it is routed, so that
/// one difference is allowed (see README, Hardening).
fn malformed_literal(x: &Classification, y: &Classification) -> bool {
    use crate::route::classify::Reason::Unparseable;
    (x.reason == Unparseable) != (y.reason == Unparseable)
}

/// `sql` with every digit changed and every letter inside single quotes changed: the same shape
/// when the changed characters were inside literals, a different text otherwise.
fn other_literals(sql: &str) -> String {
    let mut quoted = false;
    sql.chars()
        .map(|c| match c {
            '\'' => {
                quoted = !quoted;
                c
            }
            '0'..='8' => char::from(c as u8 + 1),
            '9' => '0',
            'a'..='y' if quoted => char::from(c as u8 + 1),
            _ => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Inputs the fuzzers and proptest found, kept as regressions.
    #[test]
    fn past_findings() {
        use base64::Engine as _;
        for b64 in ["CXNldAkN//89p2UqRSfUbjpcdEB4O0Ut9EAnQHh4h5c=", "c2VsZWN0CQkJDf//PWUqRSfUbjpcdPRFJwktCwkJCbAnJzs7"]
        {
            super::classifier(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap());
        }
        super::same_answers("select $$", "select 1e3");
        super::same_answers("select .5\n5.5", "select 1\n'x'");
        super::same_answers("select a5", "select a.5");
    }

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Statement-like text: SQL tokens, literals, comments and quotes in any order, so the
    /// cases reach the lexer's corners more often than uniform bytes would.
    fn sqlish() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "select ",
            "insert into t values ",
            "update t set a = ",
            "begin",
            "commit",
            ";",
            " ",
            "a",
            "a5",
            "a.5",
            ".5",
            "1e3",
            "'x'",
            "E'\\''",
            "$$q$$",
            "$t$ $ $t$",
            "\"Q\"",
            "--c\n",
            "/* pgweir: replica */",
            "/*",
            "*/",
            "(",
            ")",
            ",",
            "$1",
            "::int",
            "nextval('s')",
            "for update",
            "set ",
            "x = ",
            "U&'d\\0061'",
            "B'1'",
            "é",
            "\u{0}",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
    }

    /// Short texts from a few pieces that glue into each other (`a` `.5` / `a5`, `1` `e3` /
    /// `1e3`), so two of them often share a skeleton, or nearly do.
    fn tiny_sql() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "select ", "a", "5", ".5", "a5", "1", "e3", "'x'", "'", "$$", "x", " ", "nextval(", ")", "--", "\n",
        ]);
        prop::collection::vec(pieces, 1..6).prop_map(|p| p.concat())
    }

    proptest! {
        // Tiny texts are cheap, and near-collisions need many pairs to show up.
        #![proptest_config(ProptestConfig { cases: 100_000, ..config() })]

        #[test]
        fn texts_of_one_skeleton_have_one_answer(a in tiny_sql(), b in tiny_sql()) {
            super::same_answers(&a, &b);
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn frames_split_the_same_in_any_chunking(knobs: u16, chunk: u8, data in prop::collection::vec(any::<u8>(), 0..600)) {
            super::frames(knobs, chunk, &data);
        }

        #[test]
        fn framed_streams_split_into_their_frames(knobs: u16, chunk: u8, bodies in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)), 0..8)) {
            let mut data = bytes::BytesMut::new();
            for (tag, body) in &bodies {
                crate::wire::frame::put_frame(&mut data, *tag, body);
            }
            super::frames(knobs, chunk, &data);
        }

        #[test]
        fn startup_and_auth_input_never_panics(data in prop::collection::vec(any::<u8>(), 0..400)) {
            super::startup(&data);
        }

        #[test]
        fn startup_packets_round_trip(params in prop::collection::vec(("[a-z_]{1,12}", "[ -~é]{0,20}"), 0..6)) {
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut packet = bytes::BytesMut::new();
            crate::wire::startup::encode_startup(&pairs, &mut packet);
            super::startup(&packet);
        }

        #[test]
        fn classifier_caches_never_change_an_answer(sql in sqlish()) {
            super::classifier(sql.as_bytes());
        }

        #[test]
        fn classifier_survives_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
            super::classifier(&data);
        }
    }
}
