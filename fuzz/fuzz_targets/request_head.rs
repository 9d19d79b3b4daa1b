#![no_main]
//! `cargo fuzz run request_head` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::request_head(data);
});
