//! Writing an imported snapshot into its repository: the pack, the commit,
//! the annotated tag and the refs, all or nothing.

use std::fs;

use git2::{Oid, Repository, Signature};

use super::error::{Error, Result};
use super::pack::{self, object_id, FinishedPack, ObjectKind};
use super::tag::{self, CommitFacts, MAIN_REF};

pub(super) struct Written {
    pub(super) commit: Oid,
    pub(super) moved_main: bool,
}

/// Install the pack, write the commit and tag, and move the refs together.
pub(super) fn write_snapshot(
    repo: &Repository,
    pack: Option<FinishedPack>,
    root: Oid,
    timestamp: i64,
    facts: &CommitFacts,
    tag_name: &str,
) -> Result<Written> {
    let installed = match pack {
        Some(pack) => pack.install(&repo.path().join("objects/pack"))?,
        None => Vec::new(),
    };
    // Until the refs moved, a failure (a full disk, say) takes out again what
    // this import put into the repository: the pack and the loose commit and tag.
    let mut loose = Vec::new();
    let written = refer_snapshot(repo, root, timestamp, facts, tag_name, &mut loose);
    if written.is_err() {
        pack::uninstall(&installed);
        for oid in loose {
            let hex = oid.to_string();
            let path = repo.path().join("objects").join(&hex[..2]).join(&hex[2..]);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an object of a failed import");
            }
        }
    }
    written
}

/// The second half of [`write_snapshot`]: the commit, the tag and the refs.
/// `loose` gets the objects written that the repository did not have.
pub(super) fn refer_snapshot(
    repo: &Repository,
    root: Oid,
    timestamp: i64,
    facts: &CommitFacts,
    tag_name: &str,
    loose: &mut Vec<Oid>,
) -> Result<Written> {
    repo.odb()
        .and_then(|o| o.refresh())
        .map_err(Error::git("rescanning the object database"))?;
    let tree = repo
        .find_tree(root)
        .map_err(Error::git(format!("reading tree {root}")))?;
    let sig = Signature::new(
        tag::IDENTITY.0,
        tag::IDENTITY.1,
        &git2::Time::new(timestamp, 0),
    )
    .map_err(Error::git("making the signature"))?;

    // Parent: the newest snapshot before this one: `main`, unless this one
    // is older than main (imported with --allow-older) or replaces main's own
    // tag (--force), then the newest earlier tag.
    let main = repo
        .find_reference(MAIN_REF)
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let main_time = main.as_ref().map(|c| c.time().seconds());
    let parent = parent_commit(repo, main.as_ref(), timestamp, tag_name)?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let odb = repo
        .odb()
        .map_err(Error::git("opening the object database"))?;
    let buffer = repo
        .commit_create_buffer(&sig, &sig, &facts.message(), &tree, &parents)
        .map_err(Error::git("making the commit"))?;
    let commit = object_id(ObjectKind::Commit, &buffer);
    if !odb.exists(commit) {
        loose.push(commit);
    }
    let written = odb
        .write(git2::ObjectType::Commit, &buffer)
        .map_err(Error::git("writing the commit"))?;
    debug_assert_eq!(written, commit);
    let commit_obj = repo
        .find_object(commit, Some(git2::ObjectType::Commit))
        .map_err(Error::git("reading the new commit"))?;
    let tag = repo
        .tag_annotation_create(tag_name, &commit_obj, &sig, &tag::tag_message(facts.date))
        .map_err(Error::git("writing the tag"))?;
    // A tag object names its commit: a new commit means a new tag.
    if loose.contains(&commit) {
        loose.push(tag);
    }

    let moved_main = main_time.is_none_or(|t| t <= timestamp);
    move_refs(repo, tag_name, commit, tag, moved_main)?;
    Ok(Written { commit, moved_main })
}

/// The parent of a new snapshot commit: `main`'s commit if older than
/// `timestamp`, else the newest tag before it but `tag_name`.
pub(super) fn parent_commit<'r>(
    repo: &'r Repository,
    main: Option<&git2::Commit<'r>>,
    timestamp: i64,
    tag_name: &str,
) -> Result<Option<git2::Commit<'r>>> {
    match main {
        Some(c) if c.time().seconds() < timestamp => Ok(Some(c.clone())),
        _ => {
            let tags = tag::list_tags(repo)?;
            tags.iter()
                .filter(|t| t.time < timestamp && t.name != tag_name)
                .max_by_key(|t| t.time)
                .map(|t| repo.find_commit(t.commit))
                .transpose()
                .map_err(Error::git("reading the parent commit"))
        }
    }
}

/// Point `refs/tags/<tag_name>` at `tag` and, if `moved_main`, `main` at
/// `commit`, in one reference transaction.
pub(super) fn move_refs(
    repo: &Repository,
    tag_name: &str,
    commit: Oid,
    tag: Oid,
    moved_main: bool,
) -> Result<()> {
    let tag_ref = format!("refs/tags/{tag_name}");
    let refs = || -> std::result::Result<(), git2::Error> {
        let mut tx = repo.transaction()?;
        tx.lock_ref(&tag_ref)?;
        if moved_main {
            tx.lock_ref(MAIN_REF)?;
            tx.set_target(
                MAIN_REF,
                commit,
                None,
                &format!("portroot: import {tag_name}"),
            )?;
        }
        tx.set_target(&tag_ref, tag, None, &format!("portroot: tag {tag_name}"))?;
        tx.commit()
    };
    refs().map_err(Error::git(format!("updating {tag_ref} and {MAIN_REF}")))
}
