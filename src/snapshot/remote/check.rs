//! Checking what a fetch brought, while it is still in the quarantine:
//! every ref names a commit, and every new commit's tree is one the
//! importer could have written.

use git2::{Oid, Repository};

use crate::snapshot::error::{Error, Result};
use crate::snapshot::tree::check_symlink;

/// Check what a fetch brought before any ref points at it: every ref names
/// (through tags) a commit, and the tree of every commit new to the store is
/// one the importer could have written: entries sorted as git sorts them,
/// each name one harmless UTF-8 component (no `.`, `..`, `/`, `.git`), modes
/// of files, executables, symlinks and directories only, each entry's object
/// of the kind its mode says, symlinks staying inside the tree
/// ([`check_symlink`]). Returns the first problem as one line.
pub(super) fn check_fetched(
    repo: &Repository,
    moves: &[(String, Oid)],
    known: &[Oid],
) -> std::result::Result<(), String> {
    let odb = repo
        .odb()
        .map_err(|e| format!("opening the fetched objects: {e}"))?;
    let mut walk = repo
        .revwalk()
        .map_err(|e| format!("walking the fetched commits: {e}"))?;
    for (name, oid) in moves {
        let what = tag_name(name);
        let commit = repo
            .find_object(*oid, None)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| format!("{what} does not name a commit"))?;
        walk.push(commit.id())
            .map_err(|e| format!("walking the commits of {what}: {e}"))?;
    }
    for oid in known {
        if let Ok(c) = repo
            .find_object(*oid, None)
            .and_then(|o| o.peel_to_commit())
        {
            // Already in the store, and so already checked.
            let _ = walk.hide(c.id());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for commit in walk {
        let commit = commit.map_err(|e| format!("walking the fetched commits: {e}"))?;
        let tree = repo
            .find_commit(commit)
            .map_err(|e| format!("reading commit {}: {e}", short(commit)))?
            .tree_id();
        check_tree(&odb, tree, "", &mut seen)
            .map_err(|e| format!("commit {}: {e}", short(commit)))?;
    }
    Ok(())
}

/// Check the tree `oid` found at `path` (`""` for the root) and everything
/// below it; `seen` holds the (tree, path depth) pairs already checked,
/// since a symlink's reach depends on its depth.
pub(super) fn check_tree(
    odb: &git2::Odb<'_>,
    oid: Oid,
    path: &str,
    seen: &mut std::collections::HashSet<(Oid, usize)>,
) -> Result<()> {
    let depth = if path.is_empty() {
        0
    } else {
        path.split('/').count()
    };
    if !seen.insert((oid, depth)) {
        return Ok(());
    }
    let at = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}/{name}")
        }
    };
    let where_ = if path.is_empty() { "/" } else { path };
    let bad = |problem: String| Error::entry(where_.as_bytes(), problem);
    let object = odb
        .read(oid)
        .map_err(|e| bad(format!("reading tree {}: {e}", short(oid))))?;
    if object.kind() != git2::ObjectType::Tree {
        return Err(bad(format!("{} is not a tree", short(oid))));
    }
    let mut rest = object.data();
    let mut previous: Option<Vec<u8>> = None;
    while !rest.is_empty() {
        let (raw, tail) = split_tree_entry(rest).map_err(&bad)?;
        let (mode, raw_name, id) = (raw.mode, raw.name, raw.id);
        rest = tail;
        let name = std::str::from_utf8(raw_name).map_err(|_| {
            Error::entry(
                &[path.as_bytes(), b"/", raw_name].concat(),
                "name is not UTF-8",
            )
        })?;
        let entry = at(name);
        let refuse = |problem: &str| Error::entry(entry.as_bytes(), problem);
        let (kind, is_dir) = check_tree_entry(name, mode).map_err(|p| refuse(&p))?;
        // Git's order: names compared as bytes, a directory's as if it
        // ended in `/`.
        let mut key = raw_name.to_vec();
        if is_dir {
            key.push(b'/');
        }
        if previous.as_ref().is_some_and(|p| *p >= key) {
            return Err(refuse(
                "tree entries are not sorted as git sorts them (or repeat a name)",
            ));
        }
        previous = Some(key);
        if is_dir {
            check_tree(odb, id, &entry, seen)?;
            continue;
        }
        let (_, found) = odb
            .read_header(id)
            .map_err(|e| refuse(&format!("reading {}: {e}", short(id))))?;
        if found != kind {
            return Err(refuse(&format!("{} is a {found}, not a file", short(id))));
        }
        if mode == b"120000" {
            let target = odb
                .read(id)
                .map_err(|e| refuse(&format!("reading {}: {e}", short(id))))?;
            check_symlink(entry.as_bytes(), &entry, target.data())?;
        }
    }
    Ok(())
}

/// One entry of a raw tree object.
pub(super) struct RawEntry<'t> {
    pub(super) mode: &'t [u8],
    pub(super) name: &'t [u8],
    pub(super) id: Oid,
}

/// The first entry of raw tree data `rest`, and the data after it.
pub(super) fn split_tree_entry(rest: &[u8]) -> std::result::Result<(RawEntry<'_>, &[u8]), String> {
    let space = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| "malformed tree entry".to_owned())?;
    let mode = &rest[..space];
    let nul = rest[space..]
        .iter()
        .position(|&b| b == 0)
        .map(|n| space + n)
        .ok_or_else(|| "malformed tree entry".to_owned())?;
    let raw_name = &rest[space + 1..nul];
    let id = rest
        .get(nul + 1..nul + 21)
        .ok_or_else(|| "truncated tree entry".to_owned())?;
    let id = Oid::from_bytes(id).map_err(|e| format!("tree entry id: {e}"))?;
    let entry = RawEntry {
        mode,
        name: raw_name,
        id,
    };
    Ok((entry, &rest[nul + 21..]))
}

/// Check a tree entry's name and mode: the kind of object the mode says,
/// and whether it is a directory.
pub(super) fn check_tree_entry(
    name: &str,
    mode: &[u8],
) -> std::result::Result<(git2::ObjectType, bool), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err("not a single file name (empty, \".\", \"..\" or with /)".to_owned());
    }
    if name.eq_ignore_ascii_case(".git") {
        return Err("a .git entry, which git and the importer refuse".to_owned());
    }
    let (kind, is_dir) = match mode {
        b"40000" => (git2::ObjectType::Tree, true),
        b"100644" | b"100755" | b"120000" => (git2::ObjectType::Blob, false),
        other => {
            return Err(format!(
                "mode {} is not one of a snapshot (40000, 100644, 100755, 120000)",
                String::from_utf8_lossy(other)
            ))
        }
    };
    Ok((kind, is_dir))
}

pub(super) fn tag_name(refname: &str) -> &str {
    refname.strip_prefix("refs/tags/").unwrap_or(refname)
}

pub(super) fn short(oid: Oid) -> String {
    oid.to_string()[..7].to_owned()
}
