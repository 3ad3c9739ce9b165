#![no_main]
//! Fuzz target: see `sessiond::fuzz::merge_patch` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiond::fuzz::merge_patch(data));
