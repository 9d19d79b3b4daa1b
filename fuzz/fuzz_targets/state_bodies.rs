#![no_main]
//! `cargo fuzz run state_bodies` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::state_bodies(data);
});
