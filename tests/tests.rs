//! The one integration-test binary: real git repositories, real tarballs, real
//! FUSE mounts, real overlays and namespaces, driven through the real `portroot`
//! binary where a user would drive it.

mod util;

mod binhost;
mod cgroup;
mod cli;
mod config;
mod e2e;
mod fs_mount;
mod fuzz_regressions;
mod hostile_misc;
mod hostile_pipeline;
mod hostile_tree;
mod import;
mod isolation;
mod layer;
mod layer_export;
mod portage;
mod report_browser;
mod runner;
mod slurm;
mod stage;
mod sync;
