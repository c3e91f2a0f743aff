//! Startup packets, `options` and authentication messages (`pgweir::props::startup`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgweir::props::startup(data));
