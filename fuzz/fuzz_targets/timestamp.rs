//! `cargo fuzz run timestamp`: see the README's "Fuzzing" section and
//! `portroot::fuzzing::timestamp_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portroot::fuzzing::timestamp_bytes(data);
});
