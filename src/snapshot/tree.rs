//! From tar entry paths to git trees.
//!
//! [`SnapshotPath`] turns a raw tar path into a path inside the snapshot (top
//! directory stripped, nothing that could escape, nothing longer than Linux
//! opens), [`check_entry`] refuses what `git fsck --strict` would flag
//! (`.git` in any spelling, `.gitmodules`, ...), and [`TreeBuilder`] keeps
//! every file's (mode, blob id) in memory, about 100 bytes per entry, ~13 MB for
//! a Gentoo-sized tree, then serialises the trees bottom-up in git's entry
//! order into whatever the caller writes objects to (the import's pack),
//! after resolving every symlink against the whole tree
//! ([`TreeBuilder::check_symlinks`]).

mod checks;

use std::collections::{BTreeMap, HashMap};

use git2::Oid;

pub use self::checks::{check_entry, check_symlink, EntryKind, NAME_MAX, PATH_MAX};
use self::checks::{special_name, Special};
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
        if let Some(long) = rest.iter().find(|p| p.len() > NAME_MAX) {
            return Err(Error::entry(
                raw,
                format!(
                    "a name of {} bytes, longer than Linux allows ({NAME_MAX})",
                    long.len()
                ),
            ));
        }
        let len = rest
            .iter()
            .map(|p| p.len() + 1)
            .sum::<usize>()
            .saturating_sub(1);
        if len >= PATH_MAX {
            return Err(Error::entry(
                raw,
                format!("a path of {len} bytes, longer than Linux can open (PATH_MAX {PATH_MAX})"),
            ));
        }
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
        if let Some(name) = rest
            .iter()
            .find(|p| special_name(p) == Some(Special::DotGit))
        {
            return Err(Error::entry(
                raw,
                format!("{name:?} is a spelling of .git (git refuses such trees)"),
            ));
        }
        Ok(SnapshotPath::Inside(rest.join("/")))
    }
}

/// The most symlinks one resolution follows, as the kernel's `MAXSYMLINKS`.
pub const MAX_SYMLINK_HOPS: usize = 40;

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
    /// Symlink targets by blob id (the blob is the target).
    targets: HashMap<Oid, String>,
    /// Every symlink as (raw entry path, path), to resolve once all are in.
    symlinks: Vec<(Vec<u8>, String)>,
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

    /// Add the symlink at `path` to `target`, whose blob is `oid`.
    pub fn insert_symlink(&mut self, raw: &[u8], path: &str, oid: Oid, target: &str) -> Result<()> {
        self.insert(raw, path, FileMode::Symlink, oid)?;
        self.targets.entry(oid).or_insert_with(|| target.to_owned());
        self.symlinks.push((raw.to_vec(), path.to_owned()));
        Ok(())
    }

    /// Resolve every symlink against the whole tree, as the kernel would
    /// through a mount of it, following links through links in any order,
    /// and refuse any whose resolution climbs above the root at any point
    /// (`a/up -> ..` with `a/esc -> up/..`), or that follows more than
    /// [`MAX_SYMLINK_HOPS`] links (a loop). A walk that reaches a missing
    /// name or a file ends there: the kernel's lookup would fail too.
    ///
    /// Each link's target is walked once and its result remembered, so the
    /// work is linear in the targets' length, whatever the chains.
    pub fn check_symlinks(&self) -> Result<()> {
        let mut resolver = Resolver::new(self);
        for (raw, path) in &self.symlinks {
            let mut dir = &self.root;
            let mut parts = path.split('/').peekable();
            while let Some(part) = parts.next() {
                match dir.entries.get(part) {
                    Some(Node::Dir(d)) if parts.peek().is_some() => dir = d,
                    Some(node @ Node::File(FileMode::Symlink, oid)) if parts.peek().is_none() => {
                        let target = self.targets.get(oid).map_or("", String::as_str);
                        resolver
                            .link(node, dir, target, 1)
                            .map_err(|fail| Error::entry(raw, fail.problem(target)))?;
                    }
                    _ => break,
                }
            }
        }
        Ok(())
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
        // Depth-first with a stack of its own, not recursion: the trees go
        // out children first, each directory once all its entries are known.
        struct Frame<'a> {
            name: &'a str,
            entries: std::collections::btree_map::Iter<'a, String, Node>,
            items: Vec<Item<'a>>,
        }
        fn frame<'a>(name: &'a str, dir: &'a Dir) -> Frame<'a> {
            Frame {
                name,
                entries: dir.entries.iter(),
                items: Vec::with_capacity(dir.entries.len()),
            }
        }
        let mut scratch = Vec::new();
        let mut stack = vec![frame("", &self.root)];
        loop {
            let Some(top) = stack.last_mut() else {
                unreachable!("invariant: the root frame returns before it is popped")
            };
            match top.entries.next() {
                Some((name, Node::File(mode, oid))) => {
                    top.items.push((name, mode.as_str(), *oid, false))
                }
                Some((name, Node::Dir(sub))) => stack.push(frame(name, sub)),
                None => {
                    let Some(done) = stack.pop() else {
                        unreachable!("invariant: the stack was not empty")
                    };
                    let oid = write_tree(done.items, &mut write, &mut scratch)?;
                    match stack.last_mut() {
                        Some(parent) => parent.items.push((done.name, "40000", oid, true)),
                        None => return Ok(oid),
                    }
                }
            }
        }
    }
}

/// Where a symlink leads: a directory, or the end of any walk through it
/// (a file, or a name that is not there).
#[derive(Clone, Copy)]
enum Resolved<'a> {
    Dir(&'a Dir),
    End,
}

/// Why a symlink is refused.
enum Fail {
    Escape,
    TooMany,
    Absolute(String),
}

impl Fail {
    fn problem(&self, target: &str) -> String {
        // A target may be 4 KB: keep its two ends.
        let target = match target.char_indices().nth(160) {
            Some(_) => {
                let head: String = target.chars().take(100).collect();
                let tail: Vec<char> = target.chars().rev().take(40).collect();
                let tail: String = tail.into_iter().rev().collect();
                format!("{head}...{tail}")
            }
            None => target.to_owned(),
        };
        match self {
            Fail::Escape => {
                format!("symlink {target:?} escapes the snapshot through other symlinks")
            }
            Fail::TooMany => format!(
                "symlink {target:?} resolves through more than {MAX_SYMLINK_HOPS} symlinks (a loop?)"
            ),
            Fail::Absolute(t) => format!("symlink {target:?} resolves through absolute symlink {t:?}"),
        }
    }
}

/// What [`Resolver`] knows of a link: being resolved (met again: a loop),
/// or resolved, with the links its resolution followed, itself included.
enum Memo<'a> {
    Busy,
    Done(Resolved<'a>, usize),
}

/// Symlink resolution over a whole [`TreeBuilder`], remembering each link's
/// result. Nodes and directories are told apart by address (the tree does
/// not move while this lives).
struct Resolver<'a> {
    tree: &'a TreeBuilder,
    parents: HashMap<*const Dir, &'a Dir>,
    memo: HashMap<*const Node, Memo<'a>>,
}

impl<'a> Resolver<'a> {
    fn new(tree: &'a TreeBuilder) -> Resolver<'a> {
        let mut parents = HashMap::new();
        let mut stack = vec![&tree.root];
        while let Some(dir) = stack.pop() {
            for node in dir.entries.values() {
                if let Node::Dir(sub) = node {
                    parents.insert(sub as *const Dir, dir);
                    stack.push(sub);
                }
            }
        }
        Resolver {
            tree,
            parents,
            memo: HashMap::new(),
        }
    }

    /// Resolve the link `node` in directory `dir` pointing to `target`, met
    /// `nesting` links deep; returns where it leads and the links followed.
    fn link(
        &mut self,
        node: &'a Node,
        dir: &'a Dir,
        target: &'a str,
        nesting: usize,
    ) -> std::result::Result<(Resolved<'a>, usize), Fail> {
        let key = node as *const Node;
        match self.memo.get(&key) {
            Some(Memo::Done(r, hops)) => return Ok((*r, *hops)),
            Some(Memo::Busy) => return Err(Fail::TooMany),
            None => {}
        }
        if nesting > MAX_SYMLINK_HOPS {
            return Err(Fail::TooMany);
        }
        if target.starts_with('/') {
            return Err(Fail::Absolute(target.to_owned()));
        }
        self.memo.insert(key, Memo::Busy);
        let root = &self.tree.root;
        let mut here = dir;
        let mut hops = 1;
        let mut end = false;
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." if std::ptr::eq(here, root) => return Err(Fail::Escape),
                ".." => match self.parents.get(&(here as *const Dir)) {
                    Some(parent) => here = parent,
                    None => unreachable!("invariant: every directory but the root has a parent"),
                },
                name => match here.entries.get(name) {
                    Some(Node::Dir(d)) => here = d,
                    Some(link @ Node::File(FileMode::Symlink, oid)) => {
                        let next = self.tree.targets.get(oid).map_or("", String::as_str);
                        let (to, more) = self.link(link, here, next, nesting + 1)?;
                        hops += more;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(Fail::TooMany);
                        }
                        match to {
                            Resolved::Dir(d) => here = d,
                            Resolved::End => {
                                end = true;
                                break;
                            }
                        }
                    }
                    // A file ends the walk (or fails it, with names left);
                    // so does a name that is not there.
                    Some(Node::File(..)) | None => {
                        end = true;
                        break;
                    }
                },
            }
        }
        let to = if end {
            Resolved::End
        } else {
            Resolved::Dir(here)
        };
        self.memo.insert(key, Memo::Done(to, hops));
        Ok((to, hops))
    }
}

impl Drop for TreeBuilder {
    /// Free the directories with a stack, not recursively: the default drop
    /// of nested maps recurses once per level.
    fn drop(&mut self) {
        let mut stack = vec![std::mem::take(&mut self.root)];
        while let Some(mut dir) = stack.pop() {
            for (_, node) in std::mem::take(&mut dir.entries) {
                if let Node::Dir(sub) = node {
                    stack.push(sub);
                }
            }
        }
    }
}

/// A tree entry to serialise: name, mode, id, whether it is a directory.
type Item<'a> = (&'a str, &'static str, Oid, bool);

/// Serialise one tree from its entries and hand it to `write`.
fn write_tree<F>(mut items: Vec<Item<'_>>, write: &mut F, scratch: &mut Vec<u8>) -> Result<Oid>
where
    F: FnMut(&[u8]) -> Result<Oid>,
{
    // git's order: names compare as bytes, with a directory's name compared
    // as if it ended in '/'.
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
    fn symlink_chains_resolve_against_the_tree() {
        let resolve = |links: &[(&str, &str)]| {
            let mut t = TreeBuilder::new();
            t.insert(b"f", "d/f", FileMode::Regular, Oid::ZERO_SHA1)
                .unwrap();
            for (link, target) in links {
                let oid = object_id(ObjectKind::Blob, target.as_bytes());
                t.insert_symlink(link.as_bytes(), link, oid, target)
                    .unwrap();
            }
            t.check_symlinks().map_err(|e| e.to_string())
        };
        assert!(resolve(&[("a/up", ".."), ("a/esc", "up/..")]).is_err());
        assert!(resolve(&[("a/esc", "up/.."), ("a/up", "..")]).is_err());
        assert!(resolve(&[("a/up", ".."), ("a/in", "up/d/f")]).is_ok());
        assert!(resolve(&[("a/l", "m"), ("a/m", "l")])
            .unwrap_err()
            .contains("more than 40"));
        assert!(resolve(&[("a/gone", "missing/x")]).is_ok());
    }

    /// Building, writing and freeing a tree never recurse per level: a tree
    /// far deeper than any path allows fits a small stack.
    #[test]
    fn deep_trees_need_no_stack_per_level() {
        let worker = std::thread::Builder::new().stack_size(256 << 10);
        let root = worker
            .spawn(|| {
                let path = format!("{}f", "d/".repeat(100_000));
                let mut t = TreeBuilder::new();
                t.insert(b"deep", &path, FileMode::Regular, Oid::ZERO_SHA1)
                    .unwrap();
                let oid = object_id(ObjectKind::Blob, b"..");
                t.insert_symlink(b"up", &format!("{path}x"), oid, "..")
                    .unwrap();
                t.check_symlinks().unwrap();
                let mut trees = 0;
                let root = t
                    .write(|bytes| {
                        trees += 1;
                        Ok(object_id(ObjectKind::Tree, bytes))
                    })
                    .unwrap();
                assert_eq!(trees, 100_001);
                drop(t);
                root
            })
            .unwrap()
            .join()
            .unwrap();
        assert_ne!(root, Oid::ZERO_SHA1);
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
