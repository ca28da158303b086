//! libz-sys for this workspace: zlib-rs's C ABI under zlib's names.
//!
//! libgit2 (through libgit2-sys) links whatever the `z` link name provides;
//! this crate provides zlib-rs (libz-rs-sys with `export-symbols`), so libgit2
//! inflates with it and no C zlib is compiled, found or linked. Chosen by
//! measurement: `cargo bench -p portroot-fs --bench mount` prints the CPU
//! time to inflate every blob once (see the README's inflate figures).

#![no_std]

pub use libz_rs_sys::*;
