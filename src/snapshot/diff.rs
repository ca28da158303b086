//! What changed between two snapshot tags, in portage terms: packages
//! (`category/name`) and ebuild versions added, removed or changed, plus how
//! many files changed in `eclass/`, `profiles/` and elsewhere. This is what a
//! snapshot update may make a build server rebuild.
//!
//! libgit2 compares the two trees; unchanged subtrees are skipped by id, so a
//! day's diff of a 130k-file tree reads only the directories that changed.

use std::collections::BTreeSet;

use git2::{Delta, Repository, Tree};

use super::error::{Error, Result};

/// Top-level directories of a portage tree that are not categories.
const NOT_CATEGORIES: &[&str] = &["eclass", "profiles", "metadata", "licenses", "scripts"];

/// The portage-level difference between two snapshots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SnapshotDiff {
    /// Packages (`cat/pkg`) only in the new snapshot.
    pub packages_added: BTreeSet<String>,
    /// Packages only in the old snapshot.
    pub packages_removed: BTreeSet<String>,
    /// Packages in both with any file changed.
    pub packages_changed: BTreeSet<String>,
    /// Ebuilds (`cat/pkg-version`) only in the new snapshot.
    pub ebuilds_added: BTreeSet<String>,
    /// Ebuilds only in the old snapshot.
    pub ebuilds_removed: BTreeSet<String>,
    /// Ebuilds in both whose content (or mode) changed.
    pub ebuilds_changed: BTreeSet<String>,
    /// Files changed under `eclass/`.
    pub eclass_files: usize,
    /// Files changed under `profiles/`.
    pub profile_files: usize,
    /// Every other changed file (metadata/, licenses/, ...).
    pub other_files: usize,
}

impl SnapshotDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == SnapshotDiff::default()
    }
}

/// The tree tagged `tag` in `repo`, named `repo_name` in errors.
fn tag_tree<'r>(repo: &'r Repository, repo_name: &str, tag: &str) -> Result<Tree<'r>> {
    let unknown = || Error::UnknownTag {
        tag: tag.to_owned(),
        repo: repo_name.to_owned(),
    };
    let obj = repo
        .revparse_single(&format!("refs/tags/{tag}"))
        .map_err(|_| unknown())?;
    obj.peel_to_tree().map_err(|_| unknown())
}

/// Compare the snapshots tagged `old` and `new`.
pub fn diff_tags(repo: &Repository, repo_name: &str, old: &str, new: &str) -> Result<SnapshotDiff> {
    let old_tree = tag_tree(repo, repo_name, old)?;
    let new_tree = tag_tree(repo, repo_name, new)?;
    let diff = repo
        .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), None)
        .map_err(Error::git(format!("comparing {old} and {new}")))?;
    let mut out = SnapshotDiff::default();
    let mut touched = BTreeSet::new();
    for delta in diff.deltas() {
        let file = match delta.status() {
            Delta::Deleted => delta.old_file(),
            _ => delta.new_file(),
        };
        let Some(path) = file.path().and_then(|p| p.to_str()) else {
            out.other_files += 1;
            continue;
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["eclass", ..] => out.eclass_files += 1,
            ["profiles", ..] => out.profile_files += 1,
            [cat, pkg, rest @ ..]
                if !rest.is_empty() && !NOT_CATEGORIES.contains(cat) && !cat.starts_with('.') =>
            {
                touched.insert(format!("{cat}/{pkg}"));
                if let [file] = rest {
                    if let Some(stem) = file.strip_suffix(".ebuild") {
                        let name = format!("{cat}/{stem}");
                        match delta.status() {
                            Delta::Added => out.ebuilds_added.insert(name),
                            Delta::Deleted => out.ebuilds_removed.insert(name),
                            _ => out.ebuilds_changed.insert(name),
                        };
                    }
                }
            }
            _ => out.other_files += 1,
        }
    }
    for pkg in touched {
        let in_old = old_tree.get_path(std::path::Path::new(&pkg)).is_ok();
        let in_new = new_tree.get_path(std::path::Path::new(&pkg)).is_ok();
        match (in_old, in_new) {
            (false, true) => out.packages_added.insert(pkg),
            (true, false) => out.packages_removed.insert(pkg),
            _ => out.packages_changed.insert(pkg),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_tree(repo: &Repository, files: &[(&str, &str)], tag: &str) {
        let mut idx = git2::Index::new().unwrap();
        for (path, content) in files {
            let oid = repo.blob(content.as_bytes()).unwrap();
            let mut e = git2::IndexEntry {
                ctime: git2::IndexTime::new(0, 0),
                mtime: git2::IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: 0,
                id: oid,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            e.flags = path.len() as u16;
            idx.add(&e).unwrap();
        }
        let tree = idx.write_tree_to(repo).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let c = repo.commit(None, &sig, &sig, "m", &tree, &[]).unwrap();
        repo.tag_lightweight(tag, &repo.find_object(c, None).unwrap(), false)
            .unwrap();
    }

    #[test]
    fn packages_and_ebuilds_are_classified() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path()).unwrap();
        commit_tree(
            &repo,
            &[
                ("app-misc/foo/foo-1.ebuild", "a"),
                ("app-misc/foo/foo-2.ebuild", "b"),
                ("app-misc/foo/Manifest", "m"),
                ("dev-lang/gone/gone-1.ebuild", "g"),
                ("eclass/x.eclass", "x"),
                ("metadata/timestamp.x", "1"),
            ],
            "old",
        );
        commit_tree(
            &repo,
            &[
                ("app-misc/foo/foo-2.ebuild", "b2"),
                ("app-misc/foo/foo-3.ebuild", "c"),
                ("app-misc/foo/Manifest", "m2"),
                ("sys-apps/new/new-0.1.ebuild", "n"),
                ("eclass/x.eclass", "x2"),
                ("profiles/p", "p"),
                ("metadata/timestamp.x", "2"),
            ],
            "new",
        );
        let d = diff_tags(&repo, "r", "old", "new").unwrap();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(d.packages_added, set(&["sys-apps/new"]));
        assert_eq!(d.packages_removed, set(&["dev-lang/gone"]));
        assert_eq!(d.packages_changed, set(&["app-misc/foo"]));
        assert_eq!(
            d.ebuilds_added,
            set(&["app-misc/foo-3", "sys-apps/new-0.1"])
        );
        assert_eq!(
            d.ebuilds_removed,
            set(&["app-misc/foo-1", "dev-lang/gone-1"])
        );
        assert_eq!(d.ebuilds_changed, set(&["app-misc/foo-2"]));
        assert_eq!((d.eclass_files, d.profile_files, d.other_files), (1, 1, 1));
        assert!(diff_tags(&repo, "r", "old", "old").unwrap().is_empty());
        let err = diff_tags(&repo, "r", "old", "nope")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no snapshot tag nope in r");
    }
}
