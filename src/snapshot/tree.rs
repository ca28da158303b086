//! From tar entry paths to git trees.
//!
//! [`SnapshotPath`] turns a raw tar path into a path inside the snapshot (top
//! directory stripped, nothing that could escape), and [`TreeBuilder`] keeps
//! every file's (mode, blob id) in memory, about 100 bytes per entry, ~13 MB for
//! a Gentoo-sized tree, then serialises the trees bottom-up in git's entry
//! order into whatever the caller writes objects to (the import's pack).

use std::collections::BTreeMap;

use git2::Oid;

use super::error::{Error, Result};

/// The git mode of a tree entry that is not a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// `100644`: a regular file.
    Regular,
    /// `100755`: a regular file with the owner's execute bit.
    Executable,
    /// `120000`: a symlink; the blob is its target.
    Symlink,
}

impl FileMode {
    /// The mode as git writes it in a tree.
    pub fn as_str(self) -> &'static str {
        match self {
            FileMode::Regular => "100644",
            FileMode::Executable => "100755",
            FileMode::Symlink => "120000",
        }
    }
}

/// Where a tar entry lands in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPath {
    /// The top directory itself (`gentoo-20260820/`).
    Top,
    /// Left out on purpose: the root `.git` and `.gitignore`, as the seed's
    /// rsync excludes them.
    Excluded,
    /// A path inside the snapshot, `/`-separated, without the top directory.
    Inside(String),
}

/// Splits raw tar paths and checks they all share one top directory.
#[derive(Debug, Default)]
pub struct PathSplitter {
    top: Option<String>,
}

impl PathSplitter {
    /// The top directory seen so far.
    pub fn top(&self) -> Option<&str> {
        self.top.as_deref()
    }

    /// Where the entry with raw path `raw` goes, or why it may not be in a
    /// snapshot: not UTF-8, absolute, `..`, a second top-level entry, or a
    /// `.git` below the root (git refuses such trees).
    pub fn split(&mut self, raw: &[u8]) -> Result<SnapshotPath> {
        let text = std::str::from_utf8(raw).map_err(|_| Error::entry(raw, "path is not UTF-8"))?;
        if text.starts_with('/') {
            return Err(Error::entry(raw, "absolute path"));
        }
        let mut parts = Vec::new();
        for part in text.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(Error::entry(raw, "path contains \"..\"")),
                p => parts.push(p),
            }
        }
        let Some((&top, rest)) = parts.split_first() else {
            return Err(Error::entry(raw, "empty path"));
        };
        match &self.top {
            None => self.top = Some(top.to_owned()),
            Some(t) if t == top => {}
            Some(t) => {
                return Err(Error::entry(
                    raw,
                    format!(
                        "second top-level entry besides {t:?}: a snapshot has one top directory"
                    ),
                ))
            }
        }
        if rest.is_empty() {
            return Ok(SnapshotPath::Top);
        }
        if rest[0] == ".git" || rest == [".gitignore"] {
            return Ok(SnapshotPath::Excluded);
        }
        if rest.iter().any(|p| p.eq_ignore_ascii_case(".git")) {
            return Err(Error::entry(raw, "a .git directory below the root"));
        }
        Ok(SnapshotPath::Inside(rest.join("/")))
    }
}

/// Check that a symlink at `link` (inside the snapshot) pointing at `target`
/// stays inside the snapshot: relative, and never climbing above the root when
/// resolved lexically from the link's directory.
pub fn check_symlink(raw: &[u8], link: &str, target: &[u8]) -> Result<()> {
    let target = std::str::from_utf8(target)
        .map_err(|_| Error::entry(raw, "symlink target is not UTF-8"))?;
    if target.is_empty() {
        return Err(Error::entry(raw, "symlink with an empty target"));
    }
    if target.starts_with('/') {
        return Err(Error::entry(
            raw,
            format!("symlink to absolute path {target:?}"),
        ));
    }
    let mut depth = link.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err(Error::entry(
                    raw,
                    format!("symlink target {target:?} escapes the snapshot"),
                ))
            }
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

/// A directory being built.
#[derive(Debug, Default)]
struct Dir {
    entries: BTreeMap<String, Node>,
}

#[derive(Debug)]
enum Node {
    File(FileMode, Oid),
    Dir(Dir),
}

/// Every file of the snapshot with its mode and blob, to be written as trees.
#[derive(Debug, Default)]
pub struct TreeBuilder {
    root: Dir,
    files: u64,
}

impl TreeBuilder {
    /// An empty tree.
    pub fn new() -> TreeBuilder {
        TreeBuilder::default()
    }

    /// Files (and symlinks) added.
    pub fn files(&self) -> u64 {
        self.files
    }

    /// Add the file at `path` (from [`PathSplitter`]); `raw` names the entry in
    /// errors. A path given twice, or a file where a directory is needed (or
    /// the reverse), is refused.
    pub fn insert(&mut self, raw: &[u8], path: &str, mode: FileMode, oid: Oid) -> Result<()> {
        let mut dir = &mut self.root;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                if dir.entries.contains_key(part) {
                    return Err(Error::entry(raw, "duplicate path"));
                }
                dir.entries.insert(part.to_owned(), Node::File(mode, oid));
                self.files += 1;
                return Ok(());
            }
            let node = dir
                .entries
                .entry(part.to_owned())
                .or_insert_with(|| Node::Dir(Dir::default()));
            dir = match node {
                Node::Dir(d) => d,
                Node::File(..) => {
                    return Err(Error::entry(
                        raw,
                        "a parent directory is a file in this tarball",
                    ))
                }
            };
        }
        Err(Error::entry(raw, "empty path"))
    }

    /// Whether `path` is already a directory (so a later file there would clash).
    pub fn is_dir(&self, path: &str) -> bool {
        let mut dir = &self.root;
        for part in path.split('/') {
            match dir.entries.get(part) {
                Some(Node::Dir(d)) => dir = d,
                _ => return false,
            }
        }
        true
    }

    /// The mode and blob of the file at `path`, for hardlinks.
    pub fn get(&self, path: &str) -> Option<(FileMode, Oid)> {
        let mut dir = &self.root;
        let mut parts = path.split('/').peekable();
        while let Some(part) = parts.next() {
            match (dir.entries.get(part)?, parts.peek()) {
                (Node::File(m, o), None) => return Some((*m, *o)),
                (Node::Dir(d), Some(_)) => dir = d,
                _ => return None,
            }
        }
        None
    }

    /// Serialise every tree bottom-up, handing each one's bytes to `write`
    /// (which returns its id), and return the root tree's id.
    pub fn write<F>(&self, mut write: F) -> Result<Oid>
    where
        F: FnMut(&[u8]) -> Result<Oid>,
    {
        let mut buf = Vec::new();
        write_dir(&self.root, &mut write, &mut buf)
    }
}

fn write_dir<F>(dir: &Dir, write: &mut F, scratch: &mut Vec<u8>) -> Result<Oid>
where
    F: FnMut(&[u8]) -> Result<Oid>,
{
    // Children first; then this tree, in git's order: names compare as bytes,
    // with a directory's name compared as if it ended in '/'.
    let mut items: Vec<(&str, &'static str, Oid, bool)> = Vec::with_capacity(dir.entries.len());
    for (name, node) in &dir.entries {
        match node {
            Node::File(mode, oid) => items.push((name, mode.as_str(), *oid, false)),
            Node::Dir(sub) => {
                let oid = write_dir(sub, write, scratch)?;
                items.push((name, "40000", oid, true));
            }
        }
    }
    items.sort_by(|a, b| {
        let ka =
            a.0.as_bytes()
                .iter()
                .chain(if a.3 { &b"/"[..] } else { &[] });
        let kb =
            b.0.as_bytes()
                .iter()
                .chain(if b.3 { &b"/"[..] } else { &[] });
        ka.cmp(kb)
    });
    scratch.clear();
    for (name, mode, oid, _) in items {
        scratch.extend_from_slice(mode.as_bytes());
        scratch.push(b' ');
        scratch.extend_from_slice(name.as_bytes());
        scratch.push(0);
        scratch.extend_from_slice(oid.as_bytes());
    }
    let bytes = std::mem::take(scratch);
    let oid = write(&bytes);
    *scratch = bytes;
    oid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::pack::{object_id, ObjectKind};

    fn split(s: &mut PathSplitter, p: &str) -> Result<SnapshotPath> {
        s.split(p.as_bytes())
    }

    #[test]
    fn top_dir_is_stripped_and_must_be_single() {
        let mut s = PathSplitter::default();
        assert_eq!(
            split(&mut s, "./gentoo-20260820/").unwrap(),
            SnapshotPath::Top
        );
        assert_eq!(
            split(&mut s, "gentoo-20260820/app-misc/foo/foo-1.ebuild").unwrap(),
            SnapshotPath::Inside("app-misc/foo/foo-1.ebuild".into())
        );
        assert_eq!(
            split(&mut s, "gentoo-20260820/.gitignore").unwrap(),
            SnapshotPath::Excluded
        );
        assert_eq!(
            split(&mut s, "gentoo-20260820/.git/config").unwrap(),
            SnapshotPath::Excluded
        );
        assert_eq!(
            split(&mut s, "gentoo-20260820/eclass/.gitignore").unwrap(),
            SnapshotPath::Inside("eclass/.gitignore".into())
        );
        let err = split(&mut s, "other/file").unwrap_err().to_string();
        assert!(err.contains("one top directory"), "{err}");
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["/etc/passwd", "g/../../x", "g/a/../b", "g/x/.git/config"] {
            assert!(split(&mut PathSplitter::default(), bad).is_err(), "{bad}");
        }
        assert!(PathSplitter::default().split(b"g/\xff").is_err());
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(check_symlink(b"x", "profiles/a/parent", b"../base").is_ok());
        assert!(check_symlink(b"x", "profiles/a/parent", b"../../metadata/x").is_ok());
        assert!(check_symlink(b"x", "profiles/a/parent", b"../../../x").is_err());
        assert!(check_symlink(b"x", "top", b"..").is_err());
        assert!(check_symlink(b"x", "a", b"/etc").is_err());
        assert!(check_symlink(b"x", "a", b"").is_err());
        assert!(check_symlink(b"x", "a/b", b"./c/../../d").is_ok());
    }

    #[test]
    fn duplicates_and_clashes_are_refused() {
        let o = Oid::ZERO_SHA1;
        let mut t = TreeBuilder::new();
        t.insert(b"a", "a/b", FileMode::Regular, o).unwrap();
        assert!(t.insert(b"a", "a/b", FileMode::Regular, o).is_err());
        assert!(t.insert(b"a", "a/b/c", FileMode::Regular, o).is_err());
        assert!(t.insert(b"a", "a", FileMode::Regular, o).is_err());
        assert!(t.is_dir("a"));
        assert_eq!(t.get("a/b"), Some((FileMode::Regular, o)));
        assert_eq!(t.get("a"), None);
    }

    /// Our serialisation must give the ids `git mktree` gives for the same
    /// entries, including the order of `foo`, `foo.c` and directory `foo`.
    #[test]
    fn trees_match_git_mktree() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(tmp.path()).unwrap();
        let blob = repo.blob(b"x").unwrap();
        let mut t = TreeBuilder::new();
        for p in [
            "foo.c", "foo/bar", "foo-bar", "foo0", "a/b/c", "Z", "foo/x.y",
        ] {
            t.insert(p.as_bytes(), p, FileMode::Regular, blob).unwrap();
        }
        t.insert(b"s", "s", FileMode::Symlink, blob).unwrap();
        t.insert(b"e", "a/e", FileMode::Executable, blob).unwrap();
        let root = t
            .write(|bytes| {
                let ours = object_id(ObjectKind::Tree, bytes);
                // Have git parse and re-serialise it: a mis-sorted tree would
                // come back with a different id (or be refused).
                let theirs = repo
                    .odb()
                    .unwrap()
                    .write(git2::ObjectType::Tree, bytes)
                    .unwrap();
                assert_eq!(ours, theirs);
                let tree = repo.find_tree(ours).unwrap();
                let mut b = repo.treebuilder(Some(&tree)).unwrap();
                b.insert("zz-probe", blob, 0o100644).unwrap();
                b.remove("zz-probe").unwrap();
                assert_eq!(b.write().unwrap(), ours, "libgit2 sorts differently");
                Ok(ours)
            })
            .unwrap();
        let out = std::process::Command::new("git")
            .args(["ls-tree", "-r", "--name-only"])
            .arg(root.to_string())
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let names = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            ["Z", "a/b/c", "a/e", "foo-bar", "foo.c", "foo/bar", "foo/x.y", "foo0", "s"]
        );
    }
}
