//! `cargo fuzz run import`: see the README's "Fuzzing" section and
//! `portroot::fuzzing::import_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portroot::fuzzing::import_bytes(data);
});
