//! `cargo fuzz run stage_unpack`: see the README's "Fuzzing" section and
//! `portroot::fuzzing::stage_unpack_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portroot::fuzzing::stage_unpack_bytes(data);
});
