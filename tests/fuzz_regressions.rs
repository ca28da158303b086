//! The fuzz targets' corpora and every crash or hang input they found, replayed
//! through the same entry points (`portroot::fuzzing`) the targets call, so
//! that a parser regression fails `cargo test` and not only a fuzzing run.
//!
//! Inputs live in `fuzz/corpus/TARGET/` (seeds and whatever was kept from
//! fuzzing runs) and `fuzz/regressions/TARGET/` (inputs that crashed or hung
//! a target once; each must now pass). See the README's "Fuzzing" section.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util;

/// The longest one input may take, generous for a debug build on a loaded
/// machine: a hang in a parser is a failure, not a stuck suite.
const PER_INPUT: Duration = Duration::from_secs(20);

/// Every file of `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Replay every input of `target` through `run`, each on a thread of its own
/// bounded by [`PER_INPUT`]; returns how many were accepted.
fn replay(target: &str, run: fn(&[u8]) -> bool) -> usize {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no inputs for fuzz target {target}: fuzz/corpus/{target}/ is missing"
    );
    let mut accepted = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let shown = path.display().to_string();
        std::thread::spawn(move || {
            let ok = run(&data);
            let _ = tx.send(ok);
        });
        match rx.recv_timeout(PER_INPUT) {
            Ok(ok) => accepted += usize::from(ok),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("{shown}: still running after {PER_INPUT:?}")
            }
            // The thread panicked: the panic message is above.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{shown}: the {target} entry point panicked")
            }
        }
        assert!(started.elapsed() < PER_INPUT, "{shown}");
    }
    accepted
}

#[test]
fn fuzz_import_inputs_replay() {
    let accepted = replay("import", portroot::fuzzing::import_bytes);
    // The seeds are valid snapshots (but `refused-*`): the pipeline must
    // still take them.
    assert!(accepted >= 4, "only {accepted} import inputs imported");
}

#[test]
fn fuzz_stage_unpack_inputs_replay() {
    // chown and device nodes need root, as `stage add` does.
    if !util::require_root() {
        return;
    }
    let accepted = replay("stage_unpack", portroot::fuzzing::stage_unpack_bytes);
    assert!(accepted >= 4, "only {accepted} stage inputs unpacked");
}

#[test]
fn fuzz_timestamp_inputs_replay() {
    let accepted = replay("timestamp", portroot::fuzzing::timestamp_bytes);
    assert!(accepted >= 5, "only {accepted} timestamps accepted");
}

#[test]
fn fuzz_config_inputs_replay() {
    let accepted = replay("config", portroot::fuzzing::config_bytes);
    assert!(
        accepted >= 3,
        "only {accepted} configuration files accepted"
    );
}
