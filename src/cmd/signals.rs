//! Ctrl-C and SIGTERM for the commands that write into the store without
//! child processes to stop (`snapshot import|sync|fetch`, `stage add`,
//! `stage export`): one thread takes the signal, removes this process's
//! scratch in the store ([`Store::remove_own_scratch`]: the directories in
//! `tmp/` and `repos/` named with our PID, and the temporary file an export
//! writes beside its output), says so on one line and exits as a shell
//! reports the signal, 128 + its number (130, 143). `run`, `shell` and
//! `layer create` stop their jobs instead (`run::handle_signals`).
//!
//! [`Store::remove_own_scratch`]: portroot::store::Store::remove_own_scratch

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Ctx;

/// Set once a signal was taken: the main thread then leaves the exit (and
/// the one line) to the signal thread, instead of reporting the error its
/// work meets as the scratch vanishes under it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set by the main thread once it stopped working after a signal.
static PARKED: AtomicBool = AtomicBool::new(false);

/// How long the signal thread waits for the main thread to stop writing into
/// the scratch before it removes it anyway.
const PARK_BOUND: Duration = Duration::from_secs(1);

/// Block SIGINT and SIGTERM (call before any thread starts; children get a
/// clean mask from std) and let one thread handle them as the module doc
/// says; `what` ends the line, e.g. "unfinished import removed". A download
/// can stall in a read for the whole --timeout, so waiting for the main
/// thread to notice would be no answer to Ctrl-C.
pub fn clean_up_on_signal(ctx: &Ctx, what: &'static str) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT and SIGTERM")?;
    let store = ctx.store.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                // Writers stop at their next entry and the main thread parks
                // in `wait_if_interrupted`; one stuck in a read (a stalled
                // download) writes nothing, so the wait is bounded.
                portroot_runner::interrupt::request();
                let deadline = Instant::now() + PARK_BOUND;
                while !PARKED.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let removed = store.remove_own_scratch();
                tracing::info!(signal = ?sig, removed, "interrupted, {what}");
                eprintln!("portroot: interrupted by {sig}, {what}");
                std::process::exit(128 + sig as i32);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Called by `main` before it reports a command's outcome: if a signal was
/// taken, the signal thread is cleaning up and will end the process; wait
/// for it rather than print a second line or exit first.
pub fn wait_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        PARKED.store(true, Ordering::SeqCst);
        loop {
            std::thread::park();
        }
    }
}
