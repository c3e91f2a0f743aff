//! The frame splitter over any byte stream and chunking (`pgweir::props::frames`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let [a, b, c, rest @ ..] = data {
        pgweir::props::frames(u16::from_be_bytes([*a, *b]), *c, rest);
    }
});
