//! Deterministic fixtures shaped like the real thing: portage snapshot tarballs as
//! the mirrors pack them, and small but real stage tarballs.
//!
//! They live in the library, not in `tests/`, because the integration tests, the
//! benchmarks and `portroot demo` all build their data with them, and none of
//! those may need the network.

pub mod portage;
pub mod stage;
