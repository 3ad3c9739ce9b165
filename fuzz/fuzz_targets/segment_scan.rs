#![no_main]
//! Fuzz target: see `sessiond::fuzz::segment_scan` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiond::fuzz::segment_scan(data));
