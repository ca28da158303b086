//! `snapshot push` and `snapshot fetch`: share the snapshot repository with the
//! team's git server (the seed's Mirror Server), `main` plus every tag.
//!
//! ```text
//! push:  list the remote's refs --> main fast-forward? tags new or equal?
//!        --> push main + the tags it lacks (forced with --force)
//! fetch: into a quarantine repository in tmp/ (borrowing our objects) -->
//!        fast-forward? tags new or equal? --> move its objects in
//!        --> move main and the tags in one transaction --> drop the quarantine
//! ```
//!
//! Both check before anything moves, so a diverged `main` or a tag that names
//! different objects on the two sides is refused with one line and not one
//! file changed on either side, unless `--force`.
//!
//! **Transport.** Pushes to local paths and `file://` URLs go through git2
//! (libgit2's local transport). The workspace builds libgit2 without https
//! and ssh (no OpenSSL, no libssh2 to vendor), so every other URL
//! (`https://`, `ssh://`, `git://`, `git@host:path`) runs the `git` command
//! line instead, which brings the user's own credential helpers and ssh
//! configuration: the same checks, the same refspecs, only the wire differs.
//! Fetches run `git` for local paths too: libgit2 1.9's local transport packs
//! every annotated tag of the remote with its whole tree again, whatever the
//! receiving side has, so each fetch would copy every snapshot anew, where
//! git's negotiation brings only the missing objects.

mod check;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Direction, Oid, PushOptions, Repository, RepositoryInitOptions};
use tracing::{debug, info};

use self::check::{check_fetched, short, tag_name};
use super::error::{Error, Result};
use super::tag::{SnapshotDate, MAIN_REF};
use super::{open_repo, ImportLock};
use crate::store::Store;

/// Where fetched refs wait while they are checked.
const STAGING: &str = "refs/portroot-fetch/";

/// How to reach a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A local path (or `file://` URL), through libgit2.
    Local(PathBuf),
    /// Anything else, through the `git` command line.
    Cli(String),
}

impl Transport {
    /// Classify a remote as given on the command line.
    pub fn parse(remote: &str) -> Transport {
        if let Some(path) = remote.strip_prefix("file://") {
            Transport::Local(PathBuf::from(path))
        } else if remote.contains("://") || is_scp_like(remote) {
            Transport::Cli(remote.to_owned())
        } else {
            Transport::Local(PathBuf::from(remote))
        }
    }

    /// The URL handed to libgit2 or git.
    fn url(&self) -> String {
        match self {
            Transport::Local(p) => p.display().to_string(),
            Transport::Cli(u) => u.clone(),
        }
    }
}

/// `host:path` or `user@host:path`, as git reads it: a colon before any slash.
fn is_scp_like(remote: &str) -> bool {
    match (remote.find(':'), remote.find('/')) {
        (Some(c), Some(s)) => c < s && c > 0,
        (Some(c), None) => c > 0,
        _ => false,
    }
}

/// What a push or fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Whether `main` moved on the receiving side.
    pub moved_main: bool,
    /// Tags created or replaced on the receiving side.
    pub tags: Vec<String>,
}

/// The remote's `main` and tags (ref name → the oid the ref holds).
fn list_remote(repo: &Repository, remote: &str, t: &Transport) -> Result<BTreeMap<String, Oid>> {
    let fail = |problem: String| Error::Remote {
        remote: remote.to_owned(),
        problem,
    };
    let mut refs = BTreeMap::new();
    match t {
        Transport::Local(path) => {
            if !path.exists() {
                return Err(fail(format!("no git repository at {}", path.display())));
            }
            let mut r = repo
                .remote_anonymous(&t.url())
                .map_err(Error::git(format!("opening remote {remote}")))?;
            r.connect(Direction::Fetch)
                .map_err(Error::git(format!("connecting to {remote}")))?;
            for h in r
                .list()
                .map_err(Error::git(format!("listing the refs of {remote}")))?
            {
                refs.insert(h.name().to_owned(), h.oid());
            }
        }
        Transport::Cli(url) => {
            let out = git_cli(
                repo,
                remote,
                &["ls-remote", "--", url, "refs/heads/main", "refs/tags/*"],
            )?;
            for line in out.lines() {
                let mut it = line.split('\t');
                if let (Some(oid), Some(name)) = (it.next(), it.next()) {
                    if let Ok(oid) = Oid::from_str(oid) {
                        refs.insert(name.to_owned(), oid);
                    }
                }
            }
        }
    }
    refs.retain(|name, _| {
        (name == MAIN_REF || name.starts_with("refs/tags/")) && !name.ends_with("^{}")
    });
    Ok(refs)
}

/// Run `git --git-dir REPO ARGS` against `remote`, returning stdout; a
/// failure is one line naming `remote`.
fn git_cli(repo: &Repository, remote: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo.path())
        // No housekeeping in the quarantine or the store behind our back.
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        .args(args)
        .output()
        .map_err(Error::io("running git for", repo.path()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    Err(Error::Remote {
        remote: remote.to_owned(),
        problem: format!("git {}: {last}", args.first().unwrap_or(&"")),
    })
}

/// The local repository's `main` and tags.
fn list_local(repo: &Repository) -> Result<BTreeMap<String, Oid>> {
    let mut refs = BTreeMap::new();
    for r in repo
        .references()
        .map_err(Error::git("listing references"))?
        .flatten()
    {
        if let (Ok(name), Some(oid)) = (r.name(), r.target()) {
            if name == MAIN_REF || name.starts_with("refs/tags/") {
                refs.insert(name.to_owned(), oid);
            }
        }
    }
    Ok(refs)
}

/// Whether moving `main` from `from` to `to` is a fast-forward in `repo`
/// (which must hold both; an unknown `from` is not).
fn fast_forward(repo: &Repository, from: Oid, to: Oid) -> bool {
    from == to
        || (repo.find_commit(from).is_ok() && repo.graph_descendant_of(to, from).unwrap_or(false))
}

/// Push `main` and every tag of repository `repo_name` to `remote`.
pub fn push(store: &Store, repo_name: &str, remote: &str, force: bool) -> Result<Transfer> {
    let repo = open_repo(store, repo_name)?;
    let t = Transport::parse(remote);
    let local = list_local(&repo)?;
    let Some(&main) = local.get(MAIN_REF) else {
        return Err(Error::Remote {
            remote: remote.to_owned(),
            problem: format!("nothing to push: {repo_name} has no main branch"),
        });
    };
    let theirs = list_remote(&repo, remote, &t)?;
    let refuse = |problem: String| Error::Remote {
        remote: remote.to_owned(),
        problem,
    };

    let (specs, done) = plan_push(&repo, &local, &theirs, main, force).map_err(refuse)?;
    if specs.is_empty() {
        info!(remote, "remote already up to date");
        return Ok(done);
    }
    debug!(remote, refs = specs.len(), "pushing");
    if let Some(first) = send(&repo, remote, &t, &specs)? {
        return Err(refuse(format!("rejected {first}")));
    }
    info!(
        remote,
        moved_main = done.moved_main,
        tags = done.tags.len(),
        "pushed"
    );
    Ok(done)
}

/// The refspecs a push sends, and what it changes there: `main` if it moves
/// forward (or `force`), the tags missing there; the problem if a ref there
/// would be overwritten without `force`.
fn plan_push(
    repo: &Repository,
    local: &BTreeMap<String, Oid>,
    theirs: &BTreeMap<String, Oid>,
    main: Oid,
    force: bool,
) -> std::result::Result<(Vec<String>, Transfer), String> {
    let mut specs = Vec::new();
    let mut done = Transfer::default();
    match theirs.get(MAIN_REF) {
        Some(&their_main) if their_main == main => {}
        Some(&their_main) if !fast_forward(repo, their_main, main) && !force => {
            return Err(format!(
                "its main ({}) has diverged from the local main ({}): not a fast-forward (use --force to overwrite it)",
                short(their_main),
                short(main)
            ));
        }
        _ => {
            specs.push(format!("+{MAIN_REF}:{MAIN_REF}"));
            done.moved_main = true;
        }
    }
    for (name, &oid) in local.iter().filter(|(n, _)| n.starts_with("refs/tags/")) {
        match theirs.get(name) {
            Some(&o) if o == oid => {}
            Some(_) if !force => {
                return Err(format!(
                    "tag {} names different objects there (use --force to replace it)",
                    tag_name(name)
                ));
            }
            _ => {
                specs.push(format!("+{name}:{name}"));
                done.tags.push(tag_name(name).to_owned());
            }
        }
    }
    Ok((specs, done))
}

/// Send `specs` to `remote` over transport `t`: the first ref the remote
/// rejected, if any (its name and git's message).
fn send(
    repo: &Repository,
    remote: &str,
    t: &Transport,
    specs: &[String],
) -> Result<Option<String>> {
    match t {
        Transport::Local(_) => {
            let mut r = repo
                .remote_anonymous(&t.url())
                .map_err(Error::git(format!("opening remote {remote}")))?;
            let mut rejected: Vec<String> = Vec::new();
            let mut cbs = git2::RemoteCallbacks::new();
            cbs.push_update_reference(|name, status| {
                if let Some(msg) = status {
                    rejected.push(format!("{name}: {msg}"));
                }
                Ok(())
            });
            let mut opts = PushOptions::new();
            opts.remote_callbacks(cbs);
            r.push(specs, Some(&mut opts))
                .map_err(Error::git(format!("pushing to {remote}")))?;
            drop(opts);
            Ok(rejected.into_iter().next())
        }
        Transport::Cli(url) => {
            let mut args = vec!["push", "--porcelain", "--", url.as_str()];
            args.extend(specs.iter().map(String::as_str));
            git_cli(repo, remote, &args)?;
            Ok(None)
        }
    }
}

/// Fetch `main` and every tag of `remote` into repository `repo_name`,
/// creating it if missing (the caller holds its [`ImportLock`]).
pub fn fetch(
    store: &Store,
    repo_name: &str,
    remote: &str,
    force: bool,
    _lock: &ImportLock,
) -> Result<Transfer> {
    let t = Transport::parse(remote);
    let path = store.repo_path(repo_name);
    // A new repository is made aside and renamed into place only once the
    // fetch has worked, so a failed first fetch leaves no empty repository.
    let fresh = if path.is_dir() {
        None
    } else {
        Some(fresh_repo(store)?)
    };
    let target_path = fresh.as_ref().map_or(path.clone(), |t| t.path().to_owned());
    let local = list_local(&open_bare(&target_path)?)?;

    let quarantine = Quarantine::new(store, &target_path, &local)?;
    let q = &quarantine.repo;
    let theirs = list_remote(q, remote, &t)?;
    check_remote_refs(remote, &theirs)?;
    let specs = [
        format!("+{MAIN_REF}:{STAGING}main"),
        format!("+refs/tags/*:{STAGING}tags/*"),
    ];
    // The git command line for every transport here (see the module doc).
    let url = t.url();
    let mut args = vec!["fetch", "--no-tags", "--no-write-fetch-head", "--", &url];
    args.extend(specs.iter().map(String::as_str));
    git_cli(q, remote, &args)?;

    let refuse = |problem: String| Error::Remote {
        remote: remote.to_owned(),
        problem,
    };
    let (moves, done) = plan_fetch(q, &local, &theirs, force).map_err(refuse)?;
    if !moves.is_empty() {
        // Nothing the importer would refuse reaches the store this way
        // either: every new commit's tree is checked while the objects are
        // still in the quarantine.
        let known: Vec<Oid> = local.values().copied().collect();
        check_fetched(q, &moves, &known).map_err(refuse)?;
        let objects = quarantine.adopt(&target_path.join("objects"))?;
        debug!(objects, "fetched objects moved into the repository");
        move_refs(&target_path, &moves, remote)?;
    }
    drop(quarantine);
    if let Some(tmp) = fresh {
        let tmp = tmp.keep();
        fs::rename(&tmp, &path).map_err(Error::io("creating", &path))?;
    }
    info!(
        remote,
        moved_main = done.moved_main,
        tags = done.tags.len(),
        "fetched"
    );
    Ok(done)
}

/// A new, empty repository beside the store's repositories, to be renamed
/// into place once a first fetch has worked.
fn fresh_repo(store: &Store) -> Result<tempfile::TempDir> {
    let dir = store.repos_dir();
    fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(&Store::scratch_prefix(".new"))
        .tempdir_in(&dir)
        .map_err(Error::io("creating a directory in", &dir))?;
    init_bare(tmp.path())?;
    Ok(tmp)
}

/// Refuse a remote with nothing to fetch, or with a tag that is not a
/// snapshot date.
fn check_remote_refs(remote: &str, theirs: &BTreeMap<String, Oid>) -> Result<()> {
    if theirs.is_empty() {
        return Err(Error::Remote {
            remote: remote.to_owned(),
            problem: "has no main branch and no tags".to_owned(),
        });
    }
    // The store's tags are snapshot dates, and the mounts, `list` and
    // `diff` read them so (`--all` adds `latest` beside them): a remote tag
    // named otherwise is refused before anything is fetched.
    if let Some(name) = theirs
        .keys()
        .filter_map(|n| n.strip_prefix("refs/tags/"))
        .find(|t| t.parse::<SnapshotDate>().is_err())
    {
        return Err(Error::Remote {
            remote: remote.to_owned(),
            problem: format!(
                "tag {name:?} is not a snapshot date (YYYY-MM-DD): not a snapshot repository"
            ),
        });
    }
    Ok(())
}

/// The refs a fetch moves here, and what it changes: `main` if it moves
/// forward (or `force`), the tags missing here; the problem if a ref here
/// would be overwritten without `force`. `q` sees both sides' objects.
fn plan_fetch(
    q: &Repository,
    local: &BTreeMap<String, Oid>,
    theirs: &BTreeMap<String, Oid>,
    force: bool,
) -> std::result::Result<(Vec<(String, Oid)>, Transfer), String> {
    let mut moves: Vec<(String, Oid)> = Vec::new();
    let mut done = Transfer::default();
    if let Some(&their_main) = theirs.get(MAIN_REF) {
        match local.get(MAIN_REF) {
            Some(&mine) if mine == their_main => {}
            // The quarantine sees both sides: its own objects and ours.
            Some(&mine) if !fast_forward(q, mine, their_main) && !force => {
                return Err(format!(
                    "its main ({}) has diverged from the local main ({}): not a fast-forward (use --force to take it)",
                    short(their_main),
                    short(mine)
                ));
            }
            _ => {
                moves.push((MAIN_REF.to_owned(), their_main));
                done.moved_main = true;
            }
        }
    }
    for (name, &oid) in theirs.iter().filter(|(n, _)| n.starts_with("refs/tags/")) {
        match local.get(name) {
            Some(&o) if o == oid => {}
            Some(_) if !force => {
                return Err(format!(
                    "tag {} names different objects here (use --force to replace it)",
                    tag_name(name)
                ));
            }
            _ => {
                moves.push((name.clone(), oid));
                done.tags.push(tag_name(name).to_owned());
            }
        }
    }
    Ok((moves, done))
}

/// Point the refs of the repository at `target_path` as `moves` say, in one
/// reference transaction.
fn move_refs(target_path: &Path, moves: &[(String, Oid)], remote: &str) -> Result<()> {
    // Opened afresh so that it sees the objects just moved in.
    let repo = open_bare(target_path)?;
    let mut tx = repo
        .transaction()
        .map_err(Error::git("starting a reference transaction"))?;
    for (name, oid) in moves {
        tx.lock_ref(name)
            .map_err(Error::git(format!("locking {name}")))?;
        tx.set_target(name, *oid, None, &format!("portroot: fetch {remote}"))
            .map_err(Error::git(format!("setting {name}")))?;
    }
    tx.commit()
        .map_err(Error::git("committing the reference transaction"))
}

fn init_bare(path: &Path) -> Result<Repository> {
    Repository::init_opts(
        path,
        RepositoryInitOptions::new().bare(true).initial_head("main"),
    )
    .map_err(Error::git(format!(
        "creating a repository in {}",
        path.display()
    )))
}

fn open_bare(path: &Path) -> Result<Repository> {
    Repository::open_bare(path)
        .map_err(Error::git(format!("opening repository {}", path.display())))
}

/// A scratch repository in the store's `tmp/` that a fetch writes into, as
/// git's receive-pack quarantine: it borrows the target's objects through
/// `objects/info/alternates` and holds refs to the target's `main` and tags,
/// so only missing objects come over the wire. Nothing reaches the target
/// until [`Quarantine::adopt`]; dropping it removes everything fetched.
struct Quarantine {
    repo: Repository,
    dir: tempfile::TempDir,
}

impl Quarantine {
    fn new(store: &Store, target: &Path, local: &BTreeMap<String, Oid>) -> Result<Quarantine> {
        let tmp_root = store.tmp_dir();
        fs::create_dir_all(&tmp_root).map_err(Error::io("creating", &tmp_root))?;
        let dir = tempfile::Builder::new()
            .prefix(&Store::scratch_prefix("fetch"))
            .tempdir_in(&tmp_root)
            .map_err(Error::io("creating a directory in", &tmp_root))?;
        init_bare(dir.path())?;
        let objects = fs::canonicalize(target.join("objects"))
            .map_err(Error::io("resolving", target.join("objects")))?;
        let alternates = dir.path().join("objects/info/alternates");
        fs::write(&alternates, format!("{}\n", objects.display()))
            .map_err(Error::io("writing", &alternates))?;
        let repo = open_bare(dir.path())?;
        for (name, oid) in local {
            repo.reference(name, *oid, true, "portroot: what the target has")
                .map_err(Error::git(format!("copying {name} into the quarantine")))?;
        }
        Ok(Quarantine { repo, dir })
    }

    /// Move the fetched objects into `objects` (the target's `objects/`):
    /// packs before their indexes, so a reader never finds an index without
    /// its pack; loose objects the target already has are left behind.
    /// Returns how many files moved.
    fn adopt(&self, objects: &Path) -> Result<usize> {
        let from = self.dir.path().join("objects");
        let mut moved = 0;
        let pack_dir = from.join("pack");
        let mut packs: Vec<PathBuf> = read_dir_paths(&pack_dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e != "keep"))
            .collect();
        // .pack (and .rev) before .idx.
        packs.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
        if !packs.is_empty() {
            let to_dir = objects.join("pack");
            fs::create_dir_all(&to_dir).map_err(Error::io("creating", &to_dir))?;
            for p in packs {
                let to = to_dir.join(p.file_name().expect("invariant: read_dir names files"));
                fs::rename(&p, &to).map_err(Error::io("installing", &to))?;
                moved += 1;
            }
        }
        for dir in read_dir_paths(&from)? {
            let Some(fan) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let to_dir = objects.join(fan);
            for obj in read_dir_paths(&dir)? {
                let to = to_dir.join(obj.file_name().expect("invariant: read_dir names files"));
                if to.exists() {
                    continue;
                }
                fs::create_dir_all(&to_dir).map_err(Error::io("creating", &to_dir))?;
                fs::rename(&obj, &to).map_err(Error::io("installing", &to))?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

/// The entries of `dir`, none if it does not exist.
fn read_dir_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()).map_err(Error::io("reading", dir)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("reading", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn remotes_pick_their_transport() {
        assert_eq!(
            Transport::parse("/srv/git/gentoo.git"),
            Transport::Local("/srv/git/gentoo.git".into())
        );
        assert_eq!(
            Transport::parse("file:///srv/g.git"),
            Transport::Local("/srv/g.git".into())
        );
        assert_eq!(
            Transport::parse("rel/g.git"),
            Transport::Local("rel/g.git".into())
        );
        for cli in [
            "https://git.example/g.git",
            "ssh://git@host/g.git",
            "git@host:g.git",
            "host:path/g.git",
        ] {
            assert_eq!(Transport::parse(cli), Transport::Cli(cli.into()), "{cli}");
        }
    }

    fn repo_with_commits(dir: &Path, n: usize) -> (Repository, Vec<Oid>) {
        let repo = Repository::init_bare(dir).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        let tree = {
            let tb = repo.treebuilder(None).unwrap();
            tb.write().unwrap()
        };
        let mut ids = Vec::new();
        {
            let tree = repo.find_tree(tree).unwrap();
            let mut parent: Option<git2::Commit> = None;
            for i in 0..n {
                let parents: Vec<&git2::Commit> = parent.iter().collect();
                let id = repo
                    .commit(None, &sig, &sig, &format!("c{i}"), &tree, &parents)
                    .unwrap();
                ids.push(id);
                parent = Some(repo.find_commit(id).unwrap());
            }
        }
        (repo, ids)
    }

    #[test]
    fn fast_forward_needs_the_old_commit_as_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = repo_with_commits(tmp.path(), 3);
        assert!(fast_forward(&repo, ids[0], ids[2]));
        assert!(fast_forward(&repo, ids[1], ids[1]));
        assert!(!fast_forward(&repo, ids[2], ids[0]));
        // A commit this repository has never seen is not an ancestor.
        let unknown = Oid::from_str("0123456789abcdef0123456789abcdef01234567").unwrap();
        assert!(!fast_forward(&repo, unknown, ids[2]));
    }
}
