#![no_main]
//! `cargo fuzz run discovery_response` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::discovery_response(data);
});
