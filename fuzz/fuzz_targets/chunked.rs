#![no_main]
//! `cargo fuzz run chunked` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::chunked(data);
});
