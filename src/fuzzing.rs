//! Entry points for the fuzz targets in `fuzz/` and for the replay of their
//! corpora in the integration tests (`tests/fuzz_regressions.rs`). Not an API.
//!
//! Each function feeds one input through the real code a user's input goes
//! through, and panics only when a property that must hold for every input
//! does not: no panic inside, every refusal one printable line (the binary
//! prints errors as one line and hostile names must not break it), and what
//! is accepted reads back the same.
//!
//! The import and stage targets work in one scratch directory per thread, on
//! `/dev/shm` when it is there (no disk, no fsync cost), created on first use.
//! libFuzzer ends its process without running destructors, so each start
//! first removes the scratch of processes that are gone.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::snapshot::tag::{self, SnapshotDate};
use crate::snapshot::{self, ImportLock, ImportOptions, Outcome};
use crate::store::Store;

/// Scratch directory names: `portroot-fuzz-PID-N`.
const SCRATCH_PREFIX: &str = "portroot-fuzz-";

/// Panic unless `err`, with every source below it, reads as one printable
/// line each: what the binary prints (`{:#}`) must stay one line whatever
/// the input held.
pub fn assert_one_line(err: &(dyn std::error::Error + 'static)) {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        assert!(
            !text.chars().any(char::is_control),
            "an error message holds a control character: {text:?}"
        );
        next = e.source();
    }
}

/// Threads of this process now, from `/proc/self/status`.
pub fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Wait, at most `bound`, until no more than `count` threads run. The
/// import's decoder thread is detached on purpose (see
/// `snapshot::read_entries`) and may still be ending when the import has
/// returned; the import target waits for it, so that libFuzzer's leak check
/// after each input sees only allocations that nothing will free. `false`
/// if threads were still running after `bound`.
pub fn settle_threads(count: usize, bound: std::time::Duration) -> bool {
    let started = std::time::Instant::now();
    while threads() > count {
        if started.elapsed() > bound {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// One thread's scratch: a store for imports, a directory for stage roots.
struct Scratch {
    dir: PathBuf,
    store: Store,
    lock: ImportLock,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Where scratch goes: `/dev/shm` if present, else the temporary directory.
fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Remove the scratch of fuzzing processes that are gone.
fn remove_dead_scratch(base: &Path) {
    let Ok(dir) = std::fs::read_dir(base) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn with_scratch<T>(f: impl FnOnce(&Scratch) -> T) -> T {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let scratch = slot.get_or_insert_with(|| {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let base = scratch_base();
            remove_dead_scratch(&base);
            let dir = base.join(format!(
                "{SCRATCH_PREFIX}{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating the fuzzing scratch directory");
            let store = Store::new(dir.join("store"));
            let lock =
                ImportLock::acquire(&store, "fuzz", false, |_| {}).expect("locking the scratch");
            Scratch { dir, store, lock }
        });
        f(scratch)
    })
}

/// Import `data` as a snapshot tarball through [`snapshot::import_snapshot`]
/// (decompression, tar parsing, the path, link, `.git`, `.gitmodules` and
/// timestamp checks, hashing, the pack, the tree, the commit and the tag)
/// into a scratch repository, removed again after every import. `true` when
/// the snapshot was imported.
pub fn import_bytes(data: &[u8]) -> bool {
    with_scratch(|s| {
        let file = s.dir.join("snapshot.tar");
        std::fs::write(&file, data).expect("writing the fuzz input");
        let opts = ImportOptions {
            repo: "fuzz".to_owned(),
            verify: false,
            allow_older: true,
            force: true,
            ..ImportOptions::new(&file)
        };
        let outcome = snapshot::import_snapshot(&s.store, &opts, &s.lock);
        let repo = s.store.repo_path("fuzz");
        let imported = match outcome {
            Ok(Outcome::Imported(imported)) => {
                assert!(imported.files > 0, "an import without files");
                let git = git2::Repository::open_bare(&repo).expect("opening the scratch repo");
                let tree = git
                    .find_commit(imported.commit)
                    .expect("the imported commit")
                    .tree_id();
                assert_eq!(tree, imported.tree);
                let tag = git
                    .revparse_single(&format!("refs/tags/{}", imported.date))
                    .expect("the imported tag")
                    .peel_to_commit()
                    .expect("the tag names a commit");
                assert_eq!(tag.id(), imported.commit);
                true
            }
            Ok(Outcome::NoNewer { .. }) => panic!("a fresh repository already had the snapshot"),
            Err(e) => {
                assert_one_line(&e);
                false
            }
        };
        if repo.exists() {
            std::fs::remove_dir_all(&repo).expect("removing the scratch repository");
        }
        imported
    })
}

/// Unpack `data` as a stage tarball with
/// [`portroot_runner::stage::unpack_bytes`] into a fresh scratch root,
/// removed afterwards. `true` when it unpacked.
pub fn stage_unpack_bytes(data: &[u8]) -> bool {
    with_scratch(|s| {
        let root = s.dir.join("rootfs");
        if root.exists() {
            std::fs::remove_dir_all(&root).expect("removing the scratch root");
        }
        std::fs::create_dir(&root).expect("creating the scratch root");
        let result = portroot_runner::stage::unpack_bytes(data, &root);
        std::fs::remove_dir_all(&root).expect("removing the scratch root");
        match result {
            Ok(_) => true,
            Err(e) => {
                assert_one_line(&e);
                false
            }
        }
    })
}

/// Parse `data` as `metadata/timestamp.x` (and `timestamp.commit`) as an
/// import does; an accepted stamp must give a tag date that reads back and
/// dates it to the day before.
pub fn timestamp_bytes(data: &[u8]) -> bool {
    if let Some(id) = tag::parse_timestamp_commit(data) {
        assert!(id.len() >= 40 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let stamp = match tag::parse_timestamp_x(data) {
        Ok(t) => t,
        Err(e) => {
            assert_one_line(&e);
            return false;
        }
    };
    assert!(stamp > 0);
    if let Err(e) = tag::check_timestamp(stamp, tag::now(), true) {
        assert_one_line(&e);
        return false;
    }
    let date = SnapshotDate::from_timestamp(stamp);
    let name = date.to_string();
    let back: SnapshotDate = name.parse().expect("a tag name reads back as its date");
    assert_eq!(back, date);
    let midnight_after = date.to_timestamp();
    assert!(
        midnight_after <= stamp && stamp - midnight_after < 24 * 3600,
        "{stamp} dated {name}"
    );
    true
}

/// Parse `data` as a configuration file; what parses must print (as
/// `config show` does) to a file that parses to the same configuration.
pub fn config_bytes(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let config = match Config::parse(text, Path::new("/etc/portroot/portroot.toml")) {
        Ok(c) => c,
        Err(e) => {
            assert_one_line(&e);
            return false;
        }
    };
    let mut printed = String::new();
    let mut section = "";
    for (key, value) in config.entries() {
        let Some(value) = value else { continue };
        let (sect, name) = key.split_once('.').unwrap_or(("", key));
        if sect != section {
            let _ = writeln!(printed, "[{sect}]");
            section = sect;
        }
        let _ = writeln!(printed, "{name} = {value}");
    }
    let again = Config::parse(&printed, Path::new("printed.toml"))
        .unwrap_or_else(|e| panic!("the printed configuration does not parse: {e}\n{printed}"));
    assert_eq!(again, config, "printed as:\n{printed}");
    true
}
