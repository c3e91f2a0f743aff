//! Classification, fingerprints and the shape caches (`pgweir::props::classifier`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgweir::props::classifier(data));
