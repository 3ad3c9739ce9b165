#![no_main]
//! Fuzz target: see `sessiond::fuzz::resume_id` for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiond::fuzz::resume_id(data));
