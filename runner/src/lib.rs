//! portroot-runner: everything that turns a stage tarball and a portage tree into
//! running build chroots.
//!
//! It owns the stage store (tarballs unpacked once, content-addressed), the overlay
//! layer stack, the chroot mount plans, the sandbox that applies them and the
//! parallel job pool. It never depends on the FUSE crate or on clap: the binary
//! wires the portage tree mount in.
#![warn(missing_docs)]

pub mod archive;
pub mod binhost;
pub mod caches;
pub mod cgroup;
pub mod conf;
pub mod digest;
pub mod error;
pub mod interrupt;
pub mod job;
pub mod layer;
pub mod name;
pub mod plan;
pub mod pool;
pub mod run;
pub mod sandbox;
pub mod stage;
