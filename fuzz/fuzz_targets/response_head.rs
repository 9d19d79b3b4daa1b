#![no_main]
//! `cargo fuzz run response_head` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::response_head(data);
});
