//! Deterministic fixtures shaped like the real thing: portage snapshot tarballs as
//! the mirrors pack them, small but real stage tarballs, and real Debian
//! packages fetched into a cache on first use; and the real thing itself, a
//! stage that runs portage with a small ebuild repository ([`gentoo`]),
//! built from the package registries into the same cache.
//!
//! They live in the library, not in `tests/`, because the integration tests, the
//! benchmarks and `portroot demo` all build their data with them, and none of
//! those may need the network beyond the package registry (and the demo needs
//! none at all).

pub mod chromium;
pub mod closure;
pub mod deb;
pub mod gentoo;
pub mod portage;
pub mod slurm;
pub mod stage;

/// An io error that says what was done where, keeping the kind.
fn at(what: &str, path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
