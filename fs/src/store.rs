//! `GitStore`: the object database behind a mount.
//!
//! Resolves refs to commits and their trees, lists tags for the all-tags view, and
//! reads blobs and trees (parsed into compact, name-sorted entry lists). It is the
//! only module that talks to libgit2. `Repository` is `Send` but not `Sync`, so it
//! lives behind a `Mutex`; decompression happens under the lock, which measured no
//! slower than one repository per thread on libgit2 (see DESIGN.md).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{ObjectType, Oid, Repository};

use crate::error::{FsError, Result};

/// What a tree entry is, from its git file mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// 040000: a directory.
    Tree,
    /// 100644: a regular file.
    File,
    /// 100755: an executable file.
    Exec,
    /// 120000: a symlink; the blob holds the target.
    Symlink,
    /// 160000: a submodule (gitlink); shown as an empty directory.
    Submodule,
}

impl EntryKind {
    /// The kind for a git file mode, or `None` for modes git does not write.
    pub fn from_mode(mode: i32) -> Option<EntryKind> {
        match mode {
            0o040000 => Some(EntryKind::Tree),
            0o100644 | 0o100664 => Some(EntryKind::File),
            0o100755 => Some(EntryKind::Exec),
            0o120000 => Some(EntryKind::Symlink),
            0o160000 => Some(EntryKind::Submodule),
            _ => None,
        }
    }

    /// Whether it shows as a directory.
    pub fn is_dir(self) -> bool {
        matches!(self, EntryKind::Tree | EntryKind::Submodule)
    }
}

/// One entry of a parsed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// The file name (raw bytes, never contains `/` or NUL).
    pub name: Box<[u8]>,
    /// The object id (a blob, a tree, or a commit for submodules).
    pub oid: Oid,
    /// What it is.
    pub kind: EntryKind,
}

/// A ref peeled to its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The commit.
    pub commit: Oid,
    /// Its root tree.
    pub tree: Oid,
    /// Its committer time, seconds since the epoch.
    pub time: i64,
}

/// The git object database of one repository.
pub struct GitStore {
    path: PathBuf,
    repo: Mutex<Repository>,
}

impl std::fmt::Debug for GitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The object `name` names in `repo`: a tag first, so that a tag shadows a
/// branch of the same name, then any revision git understands (a branch, a
/// commit id). The one place this rule is written: a run pins its trees with
/// it and a mount serves what it finds.
pub fn lookup<'r>(
    repo: &'r git2::Repository,
    name: &str,
) -> std::result::Result<git2::Object<'r>, git2::Error> {
    repo.revparse_single(&format!("refs/tags/{name}"))
        .or_else(|_| repo.revparse_single(name))
}

impl GitStore {
    /// Open a bare repository or a `.git` directory (no discovery upwards, so a
    /// typo never silently serves some enclosing repository).
    pub fn open(git_dir: &Path) -> Result<GitStore> {
        // libgit2's own object cache would sit beside ours, unbounded by the
        // --cache-size budget; ours is the only cache.
        git2::opts::enable_caching(false);
        // Re-hashing every object read to check its id cost more than a fifth
        // of the daemon's time on a cold walk (SHA-1 with collision detection);
        // pack data is already covered by zlib's checksum and the pack's own.
        git2::opts::strict_hash_verification(false);
        let repo = Repository::open_bare(git_dir)
            .or_else(|_| Repository::open(git_dir))
            .map_err(|source| FsError::OpenRepo {
                path: git_dir.to_owned(),
                source,
            })?;
        Ok(GitStore {
            path: git_dir.to_owned(),
            repo: Mutex::new(repo),
        })
    }

    /// The repository directory as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn repo(&self) -> std::sync::MutexGuard<'_, Repository> {
        // A panic while holding the lock cannot leave the repository half-changed
        // (we only read), so a poisoned lock is still usable.
        self.repo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve a tag, branch or commit id to its commit.
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        let repo = self.repo();
        let unknown = || FsError::UnknownRef {
            name: name.to_owned(),
            repo: self.path.clone(),
        };
        let obj = lookup(&repo, name).map_err(|_| unknown())?;
        let commit = obj.peel_to_commit().map_err(|_| unknown())?;
        Ok(Resolved {
            commit: commit.id(),
            tree: commit.tree_id(),
            time: commit.time().seconds(),
        })
    }

    /// Every tag that peels to a commit, sorted by name. Tags of trees or blobs
    /// are skipped (they have no commit time and no place in the view).
    pub fn tags(&self) -> Result<Vec<(String, Resolved)>> {
        let repo = self.repo();
        let refs = repo
            .references_glob("refs/tags/*")
            .map_err(|e| FsError::git("refs/tags", e))?;
        let mut tags = Vec::new();
        for r in refs {
            let r = r.map_err(|e| FsError::git("refs/tags", e))?;
            let Some(name) = r.name().ok().and_then(|n| n.strip_prefix("refs/tags/")) else {
                continue;
            };
            // A tag name with '/' would need intermediate directories; portroot's
            // own tags are dates, so those are left out.
            if name.contains('/') {
                tracing::debug!(tag = name, "skipping tag with a slash");
                continue;
            }
            match r.peel_to_commit() {
                Ok(c) => tags.push((
                    name.to_owned(),
                    Resolved {
                        commit: c.id(),
                        tree: c.tree_id(),
                        time: c.time().seconds(),
                    },
                )),
                Err(e) => {
                    tracing::debug!(tag = name, error = %e, "skipping tag that is not a commit")
                }
            }
        }
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tags)
    }

    /// Read a tree into entries sorted by name bytes (for binary search), with
    /// entries of unknown modes dropped.
    pub fn read_tree(&self, oid: Oid) -> Result<Vec<TreeEntry>> {
        let repo = self.repo();
        let tree = repo
            .find_tree(oid)
            .map_err(|e| FsError::git(format_args!("tree {oid}"), e))?;
        let mut entries: Vec<TreeEntry> = tree
            .iter()
            .filter_map(|e| {
                let kind = EntryKind::from_mode(e.filemode());
                if kind.is_none() {
                    tracing::debug!(tree = %oid, mode = e.filemode(), "skipping entry of unknown mode");
                }
                Some(TreeEntry {
                    name: e.name_bytes().into(),
                    oid: e.id(),
                    kind: kind?,
                })
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Read a blob's content (copied once, straight into its shared buffer).
    pub fn read_blob(&self, oid: Oid) -> Result<std::sync::Arc<[u8]>> {
        let repo = self.repo();
        let odb = repo
            .odb()
            .map_err(|e| FsError::git("the object database", e))?;
        let obj = odb
            .read(oid)
            .map_err(|e| FsError::git(format_args!("blob {oid}"), e))?;
        if obj.kind() != ObjectType::Blob {
            return Err(FsError::WrongType {
                oid,
                expected: "blob",
            });
        }
        Ok(std::sync::Arc::from(obj.data()))
    }

    /// A blob's size, from the object header (no full decompression for loose
    /// objects and undeltified pack entries).
    pub fn blob_size(&self, oid: Oid) -> Result<u64> {
        let repo = self.repo();
        let odb = repo
            .odb()
            .map_err(|e| FsError::git("the object database", e))?;
        let (size, kind) = odb
            .read_header(oid)
            .map_err(|e| FsError::git(format_args!("blob {oid}"), e))?;
        if kind != ObjectType::Blob {
            return Err(FsError::WrongType {
                oid,
                expected: "blob",
            });
        }
        Ok(size as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Run git in `dir` with a fixed identity and dates, asserting success.
    pub(crate) fn git(dir: &Path, args: &[&str], date: &str) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .expect("running git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A small work tree repo with two tags: `one` (2026-08-20) and `two`.
    pub(crate) fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"], "");
        std::fs::create_dir_all(d.join("a/b")).expect("mkdir");
        std::fs::write(d.join("a/b/file"), "hello\n").expect("write");
        std::fs::write(d.join("empty"), "").expect("write");
        std::fs::write(d.join("run.sh"), "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("a/b/file", d.join("link")).expect("symlink");
        git(d, &["add", "-A"], "");
        git(d, &["commit", "-q", "-m", "one"], "1787270400 +0000");
        git(d, &["tag", "-a", "-m", "one", "one"], "1787270400 +0000");
        std::fs::write(d.join("a/b/file"), "hello again\n").expect("write");
        git(d, &["commit", "-q", "-am", "two"], "1787356800 +0000");
        git(d, &["tag", "two"], "1787356800 +0000");
        dir
    }

    #[test]
    fn resolve_peels_annotated_and_lightweight_tags() {
        let dir = fixture();
        let store = GitStore::open(&dir.path().join(".git")).expect("open");
        let one = store.resolve("one").expect("one");
        let two = store.resolve("two").expect("two");
        assert_eq!(one.time, 1787270400);
        assert_eq!(two.time, 1787356800);
        assert_ne!(one.tree, two.tree);
        assert_eq!(store.resolve("main").expect("main"), two);
        assert_eq!(store.resolve(&two.commit.to_string()).expect("id"), two);
        let tags = store.tags().expect("tags");
        assert_eq!(
            tags.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
    }

    #[test]
    fn unknown_ref_names_the_ref() {
        let dir = fixture();
        let store = GitStore::open(&dir.path().join(".git")).expect("open");
        let err = store.resolve("nope").expect_err("must fail");
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }

    #[test]
    fn missing_repo_is_an_error_naming_it() {
        let err = GitStore::open(Path::new("/nonexistent/repo.git")).expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/repo.git"), "{err}");
    }

    #[test]
    fn trees_keep_modes_and_sort_by_name() {
        let dir = fixture();
        let store = GitStore::open(&dir.path().join(".git")).expect("open");
        let one = store.resolve("one").expect("one");
        let entries = store.read_tree(one.tree).expect("tree");
        let names: Vec<_> = entries.iter().map(|e| (&*e.name, e.kind)).collect();
        assert_eq!(
            names,
            [
                (&b"a"[..], EntryKind::Tree),
                (&b"empty"[..], EntryKind::File),
                (&b"link"[..], EntryKind::Symlink),
                (&b"run.sh"[..], EntryKind::Exec),
            ]
        );
        let link = &entries[2];
        assert_eq!(&*store.read_blob(link.oid).expect("blob"), b"a/b/file");
        assert_eq!(store.blob_size(link.oid).expect("size"), 8);
        assert!(store.read_blob(one.tree).is_err(), "a tree is not a blob");
    }
}
