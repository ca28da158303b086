//! `cargo fuzz run config`: see the README's "Fuzzing" section and
//! `portroot::fuzzing::config_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portroot::fuzzing::config_bytes(data);
});
