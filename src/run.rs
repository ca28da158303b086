//! A run as a library object: what `portroot run`, `shell` and `layer create`
//! do between reading their arguments and printing (`layer create` is a run
//! of one job whose chroot [`keep_job`] keeps).
//!
//! It lives in the root library because a run is the one place where the
//! portage tree (the `fs` crate's FUSE mount) meets the chroots (the
//! `runner` crate), and those two crates never depend on each other. The
//! commands only turn flags and configuration into [`Settings`], then print
//! the [`Outcome`] this module returns.
//!
//! A run goes in this order, so that a bad argument leaves nothing behind and
//! a killed runner leaves no mount:
//!
//! 1. [`pin`]: check everything the user gave (stage and its `/bin/bash`,
//!    layers, tag, repos) and pin it: the stage and layers are leased (so
//!    `stage rm` and `layer rm` refuse them meanwhile), every tree's ref is
//!    resolved to its commit, the chroot's shape is decided;
//! 2. [`execute`]: while still single-threaded, `unshare(CLONE_NEWNS)` and
//!    make `/` recursively private, so every mount the run makes dies with
//!    the process, even on SIGKILL; block SIGINT/SIGTERM before any thread
//!    exists and hand them to one thread that kills the jobs; create
//!    `runs/<id>/` (locked) and mount each tree once;
//! 3. run the pool: each worker starts `/proc/self/exe internal sandbox SPEC`
//!    per job (see `portroot_runner::sandbox`);
//! 4. unmount, remove the chroots (unless kept), check what landed in the
//!    binhost, record the outcomes and return them.

mod execute;
mod generation;
mod layer;
mod pin;
pub mod remote;
mod shell;
pub mod slurm;
pub mod task;

pub use execute::{execute, private_mount_namespace, Batch, Finished, Outcome};
pub use layer::keep_job;
pub use pin::{pin, Pinned, Settings};
pub use shell::{reenter, Shell};
