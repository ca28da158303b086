//! The on-disk store: where every repository, stage, layer and run lives.
//!
//! ```text
//! repos/<name>.git       bare git repos; `gentoo` holds the imported snapshots
//! stages/<sha256>/       rootfs/ + stage.json; a name points at a digest
//! layers/<name>/         a committed upper dir + layer.json (its parent chain)
//! runs/<run-id>/<job>/   upper/ work/ root/ log status
//! distfiles/             shared DISTDIR (read-write for jobs; made root:portage 2775)
//! binpkgs/               shared PKGDIR = the binary package server's directory
//! tmp/                   scratch space on the same filesystem, for atomic renames
//! ```

use std::io;
use std::path::{Path, PathBuf};

pub use portroot_runner::name::is_valid_name;
use portroot_runner::name::NAME_RULE;

/// The default store root, overridden by `--store` or `PORTROOT_STORE`.
pub const DEFAULT_STORE: &str = "/var/lib/portroot";

/// The default name of the snapshot repository.
pub const DEFAULT_REPO: &str = "gentoo";

/// A store root directory. Creating one makes no directories; the `ensure_*`
/// methods create what a command is about to write.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root` (need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `repos/`: the bare git repositories.
    pub fn repos_dir(&self) -> PathBuf {
        self.root.join("repos")
    }

    /// `repos/<name>.git`: the bare repository called `name`.
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.repos_dir().join(format!("{name}.git"))
    }

    /// `stages/`: unpacked stage tarballs, by digest.
    pub fn stages_dir(&self) -> PathBuf {
        self.root.join("stages")
    }

    /// `layers/`: committed overlay upper directories, by name.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// `runs/`: one directory per run, one per job inside it.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// `distfiles/`: the shared DISTDIR.
    pub fn distfiles_dir(&self) -> PathBuf {
        self.root.join("distfiles")
    }

    /// `binpkgs/`: the shared PKGDIR, the binary package server's directory.
    pub fn binpkgs_dir(&self) -> PathBuf {
        self.root.join("binpkgs")
    }

    /// The binhost `spec` names (`run --binhost`, `binhost --binhost`): an
    /// absolute directory as it is, a name under the store.
    pub fn binhost_dir(&self, spec: &Path) -> PathBuf {
        if spec.is_absolute() {
            spec.to_owned()
        } else {
            self.root.join(spec)
        }
    }

    /// `tmp/`: scratch space on the store's filesystem, so that finished work
    /// can be renamed into place atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The name prefix of this process's scratch directories of `kind`
    /// (`import`, `sync`, `fetch`, `stage`, `removing`, `export` in `tmp/`; `.new` in
    /// `repos/`): `KIND-PID-`, so that a signal handler removes exactly its
    /// own and `gc` can tell a dead process's from a live one's.
    pub fn scratch_prefix(kind: &str) -> String {
        format!("{kind}-{}-", std::process::id())
    }

    /// Where scratch directories live, by kind. `stage` is `stage add`'s
    /// unpack and `removing` a stage `stage rm` took out of the store (the
    /// stage store names them so); `export` is `stage export`'s, holding
    /// its view of the layers and [`EXPORT_PARTIAL`].
    fn scratch_places(&self) -> [(PathBuf, &'static str); 7] {
        [
            (self.tmp_dir(), "import"),
            (self.tmp_dir(), "sync"),
            (self.tmp_dir(), "fetch"),
            (self.tmp_dir(), "stage"),
            (self.tmp_dir(), "removing"),
            (self.tmp_dir(), "export"),
            (self.repos_dir(), ".new"),
        ]
    }

    /// Remove every scratch directory for which `remove(pid)` says yes;
    /// returns how many were removed.
    fn remove_scratch_where(&self, remove: impl Fn(u32) -> bool) -> usize {
        let mut removed = 0;
        for (dir, kind) in self.scratch_places() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let prefix = format!("{kind}-");
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                if !pid.is_some_and(&remove) || !e.path().is_dir() {
                    continue;
                }
                if kind == "export" {
                    forget_export(&e.path());
                }
                match remove_tree(&e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::warn!("could not remove {}: {err}", e.path().display())
                    }
                }
            }
        }
        removed
    }

    /// Remove this process's scratch directories. For a signal handler about
    /// to exit: they are normally removed when the command returns, but an
    /// exit skips that.
    pub fn remove_own_scratch(&self) -> usize {
        let me = std::process::id();
        self.remove_scratch_where(|pid| pid == me)
    }

    /// Remove the scratch directories of processes that no longer run (an
    /// import, sync or fetch killed with SIGKILL), for `gc`.
    pub fn remove_dead_scratch(&self) -> usize {
        self.remove_scratch_where(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Create `dir` (and parents) if missing.
    pub fn ensure(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
}

/// The file in an `export-PID-*` scratch directory naming the temporary
/// tarball `stage export` writes beside its output (an absolute path, the
/// file itself only ever created after this names it), so that `gc` finds it
/// after a `kill -9`; removed once the tarball is renamed into place.
pub const EXPORT_PARTIAL: &str = "partial";

/// Undo what the export whose scratch directory is `dir` left outside it:
/// its view of the layers, mounted in our own mount namespace (a signal
/// handler's case; a killed process's namespace went with it), and the
/// temporary tarball [`EXPORT_PARTIAL`] names. Only a hidden file (`.NAME`)
/// is removed, never what the record's path names if it is anything else.
fn forget_export(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join("view"), nix::mount::MntFlags::MNT_DETACH);
    let Ok(target) = std::fs::read(dir.join(EXPORT_PARTIAL)) else {
        return;
    };
    use std::os::unix::ffi::OsStrExt;
    let target = Path::new(std::ffi::OsStr::from_bytes(&target));
    let hidden = target
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"."));
    let file = std::fs::symlink_metadata(target).is_ok_and(|m| m.is_file());
    if target.is_absolute() && hidden && file {
        match std::fs::remove_file(target) {
            Ok(()) => tracing::info!(file = %target.display(), "removed an unfinished export"),
            Err(e) => tracing::warn!("could not remove {}: {e}", target.display()),
        }
    }
}

/// `remove_dir_all`, again while the tree changes under it: a signal
/// handler removes the scratch of work the main thread may still be writing
/// into when it did not stop in time ([`portroot_runner::interrupt`]). A
/// writer only ever adds to directories that still exist, so retrying wins
/// once the writer's own directory is gone; the retries are bounded in time.
fn remove_tree(dir: &Path) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            other => return other,
        }
    }
}

/// clap's value parser for a name given on the command line: what
/// [`is_valid_name`] accepts, or a usage error (exit 2) saying the rule.
pub fn parse_name(name: &str) -> Result<String, String> {
    if is_valid_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!("a name is {NAME_RULE}"))
    }
}

/// The binhost `run --publish` and `portroot binhost` use when none is
/// given or configured: the store's `binpkgs/`.
pub const DEFAULT_BINHOST: &str = "binpkgs";

/// clap's value parser for a binhost: a name under the store (`binpkgs`)
/// or an absolute directory.
pub fn parse_binhost(spec: &str) -> Result<PathBuf, String> {
    let path = Path::new(spec);
    if path.is_absolute() || is_valid_name(spec) {
        Ok(path.to_owned())
    } else {
        Err(format!(
            "a binhost is an absolute directory or a name of {NAME_RULE}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_the_design() {
        let s = Store::new("/srv/pr");
        assert_eq!(s.repo_path("gentoo"), Path::new("/srv/pr/repos/gentoo.git"));
        assert_eq!(s.binpkgs_dir(), Path::new("/srv/pr/binpkgs"));
    }

    #[test]
    fn scratch_of_this_process_and_of_dead_ones_is_found_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let me = std::process::id();
        // PID 4194304 is above the kernel's pid_max limit: never alive.
        let dead = 4_194_304u32;
        for d in [
            format!("tmp/import-{me}-a"),
            format!("tmp/sync-{me}-b"),
            format!("tmp/fetch-{dead}-c"),
            format!("repos/.new-{dead}-d"),
            "tmp/import-x".to_owned(),
            "tmp/stage-1-e".to_owned(),
            "repos/gentoo.git".to_owned(),
        ] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let left = |dir: &str| {
            let mut v: Vec<String> = std::fs::read_dir(tmp.path().join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(store.remove_dead_scratch(), 2);
        assert_eq!(left("repos"), ["gentoo.git"]);
        assert_eq!(store.remove_own_scratch(), 2);
        assert_eq!(left("tmp"), ["import-x", "stage-1-e"]);
    }

    #[test]
    fn names_that_escape_are_invalid() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\0", &"n".repeat(200)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        for good in ["gentoo", "my-overlay", "stage4_amd64", "v1.2+x"] {
            assert!(is_valid_name(good), "{good:?}");
        }
    }
}
