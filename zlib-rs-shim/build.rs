//! Tells the crates that link zlib (libgit2-sys) where its headers are:
//! zlib-rs's own `zlib.h` and `zconf.h`, copied from libz-rs-sys.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:include={dir}/include");
    println!("cargo:root={dir}");
    println!("cargo:rerun-if-changed=include");
}
