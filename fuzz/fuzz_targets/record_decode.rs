#![no_main]
//! Fuzz target: see `sessiond::fuzz::record_decode` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiond::fuzz::record_decode(data));
