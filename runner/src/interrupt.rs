//! A process-wide request to stop writing, for a signal handler that is about
//! to remove the scratch the main thread is still filling.
//!
//! Removing a directory while another thread creates entries in it races: a
//! file created between `remove_dir_all`'s last unlink and its `rmdir` makes
//! the `rmdir` fail with "Directory not empty", however often it is retried
//! while the writer keeps going. So the handler first asks the writers to stop
//! ([`request`]); long loops over archive entries check [`requested`] once per
//! entry and return [`Error::Interrupted`](crate::error::Error::Interrupted).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask every loop that checks [`requested`] to stop at its next entry.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether [`request`] was called in this process.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}
