//! portroot: reproducible Gentoo build chroots.
//!
//! This library half of the `portroot` package holds what the binary and the
//! integration tests share: the store layout, the configuration file and the
//! snapshot importer (tarball → git blobs and trees → commit + annotated tag).
//! The FUSE filesystem lives in `portroot-fs`, the chroots and the job pool in
//! `portroot-runner`.
#![warn(missing_docs)]

pub mod config;
pub mod fixture;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod output;
pub mod report;
pub mod run;
pub mod snapshot;
pub mod store;
