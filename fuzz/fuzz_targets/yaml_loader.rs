#![no_main]
//! `cargo fuzz run yaml_loader` — see docs/fuzzing.md.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    outrigger_proxy::fuzz_support::yaml_loader(data);
});
