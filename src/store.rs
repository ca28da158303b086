//! The on-disk store: where every repository, stage, layer and run lives.
//!
//! ```text
//! repos/<name>.git       bare git repos; `gentoo` holds the imported snapshots
//! stages/<sha256>/       rootfs/ + stage.json; a name points at a digest
//! layers/<name>/         a committed upper dir + layer.json (its parent chain)
//! runs/<run-id>/<job>/   upper/ work/ root/ log status
//! distfiles/             shared DISTDIR (read-write for jobs)
//! binpkgs/               shared PKGDIR = the binary package server's directory
//! tmp/                   scratch space on the same filesystem, for atomic renames
//! ```

use std::io;
use std::path::{Path, PathBuf};

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

    /// `tmp/`: scratch space on the store's filesystem, so that finished work
    /// can be renamed into place atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Create `dir` (and parents) if missing.
    pub fn ensure(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
}

/// Check that a user-given name (repository, stage, layer, job) is a single,
/// harmless path component: letters, digits and `._+-`, not starting with a dot.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
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
    fn names_that_escape_are_invalid() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "x\0", &"n".repeat(200)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        for good in ["gentoo", "my-overlay", "stage4_amd64", "v1.2+x"] {
            assert!(is_valid_name(good), "{good:?}");
        }
    }
}
