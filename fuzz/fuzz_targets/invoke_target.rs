#![no_main]
//! `cargo fuzz run invoke_target` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::invoke_target(data);
});
