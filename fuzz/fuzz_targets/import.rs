//! `cargo fuzz run import`: see the README's "Fuzzing" section and
//! `portroot::fuzzing::import_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let before = portroot::fuzzing::threads();
    portroot::fuzzing::import_bytes(data);
    // The import's detached decoder thread ends on its own, soon: one that
    // is still there after 5 s is a thread the import leaked.
    assert!(
        portroot::fuzzing::settle_threads(before, std::time::Duration::from_secs(5)),
        "a thread of the import outlived it by 5 s"
    );
});
