//! `portroot snapshot import|list|diff` through the real binary: real tarballs
//! from the portage fixture, real bare repositories checked with git's own
//! tools (`git archive`, `git fsck`, `git cat-file`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portroot::fixture::portage::{pack_snapshot, pack_snapshot_with_top, PortageTree};
use portroot_runner::archive::Compression;

use crate::util;

/// One test's world: a store and room for trees and tarballs.
struct Env {
    tmp: tempfile::TempDir,
    store: PathBuf,
    n: std::cell::Cell<u32>,
}

/// What must not change when an import is refused.
#[derive(Debug, PartialEq, Eq)]
struct RepoState {
    refs: String,
    packs: Vec<String>,
    loose: usize,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Env {
            tmp,
            store,
            n: Default::default(),
        }
    }

    fn scratch(&self, what: &str) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let d = self.tmp.path().join(format!("{what}-{}", self.n.get()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Write `tree` and return its directory.
    fn tree(&self, tree: &PortageTree) -> PathBuf {
        let dir = self.scratch("tree");
        tree.write_tree(&dir).unwrap();
        dir
    }

    /// Write and pack `tree` as the mirrors do; returns (tree dir, tarball).
    fn snapshot(&self, tree: &PortageTree, c: Compression) -> (PathBuf, PathBuf) {
        let dir = self.tree(tree);
        let file = pack_snapshot(&dir, &tree.snapshot_stem(), c, &self.scratch("out")).unwrap();
        (dir, file)
    }

    fn repo(&self) -> PathBuf {
        self.store.join("repos/gentoo.git")
    }

    fn portroot(&self) -> Command {
        util::portroot(&self.store)
    }

    fn import(&self, file: &Path, args: &[&str]) -> Command {
        let mut c = self.portroot();
        c.args(["snapshot", "import"]).arg(file).args(args);
        c
    }

    /// Import `file` with `args`, which must succeed and leave a repository
    /// that `git fsck --strict` finds clean. Returns stdout.
    fn imports(&self, file: &Path, args: &[&str]) -> String {
        let out = util::ok(&mut self.import(file, args));
        self.fsck();
        out
    }

    fn git(&self, args: &[&str]) -> String {
        util::ok(Command::new("git").arg("-C").arg(self.repo()).args(args))
    }

    fn state(&self) -> Option<RepoState> {
        if !self.repo().exists() {
            return None;
        }
        let mut packs: Vec<String> = fs::read_dir(self.repo().join("objects/pack"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        packs.sort();
        let loose = fs::read_dir(self.repo().join("objects"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 2)
            .count();
        Some(RepoState {
            refs: self.git(&["for-each-ref", "--format=%(refname) %(objectname)"]),
            packs,
            loose,
        })
    }

    fn fsck(&self) {
        self.git(&["fsck", "--strict", "--no-dangling"]);
    }

    /// Assert that importing `file` with `args` fails, saying `expected`, and
    /// leaves the repository exactly as it was.
    fn refused(&self, file: &Path, args: &[&str], expected: &str) -> String {
        let before = self.state();
        let err = util::fails(&mut self.import(file, args), 1);
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
        assert_eq!(self.state(), before, "the repository changed");
        if before.is_some() {
            self.fsck();
        }
        let leftovers: Vec<_> = fs::read_dir(self.store.join("tmp"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name())
                    .filter(|n| n.to_string_lossy().starts_with("import-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        err
    }
}

/// Every file below `dir` as path -> (mode, content or symlink target).
fn walk(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        0o120000,
                        fs::read_link(&path)
                            .unwrap()
                            .into_os_string()
                            .into_encoded_bytes(),
                    ),
                );
            } else if meta.is_dir() {
                go(root, &path, out);
            } else {
                let exec = meta.permissions().mode() & 0o100 != 0;
                out.insert(
                    rel,
                    (
                        if exec { 0o100755 } else { 0o100644 },
                        fs::read(&path).unwrap(),
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

/// `git archive TAG | tar -x` into a fresh directory.
fn checkout(env: &Env, tag: &str) -> PathBuf {
    let dest = env.scratch("checkout");
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(env.repo())
        .args(["archive", tag])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&dest)
        .stdin(archive.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(archive.wait().unwrap().success());
    assert!(tar.success());
    dest
}

fn assert_round_trip(env: &Env, tree_dir: &Path, tag: &str) {
    let mut expected = walk(tree_dir);
    assert!(
        expected.remove(".gitignore").is_some(),
        "fixture lacks its .gitignore"
    );
    assert!(expected
        .keys()
        .any(|k| k.starts_with("metadata/md5-cache/")));
    let got = walk(&checkout(env, tag));
    assert_eq!(got.len(), expected.len());
    for (path, want) in &expected {
        assert_eq!(
            got.get(path),
            Some(want),
            "{path} differs after the round trip"
        );
    }
}

#[test]
fn import_round_trips_every_compression() {
    let tree = PortageTree::small(11);
    for c in [
        Compression::Xz,
        Compression::Bzip2,
        Compression::Gzip,
        Compression::Zstd,
        Compression::None,
    ] {
        let env = Env::new();
        let (dir, file) = env.snapshot(&tree, c);
        let out = env.imports(&file, &[]);
        assert!(
            out.starts_with("imported 2026-08-20: commit "),
            "{c}: {out}"
        );
        assert!(out.contains(" files, "), "{out}");
        assert_round_trip(&env, &dir, "2026-08-20");
        env.fsck();
        assert_eq!(
            env.state().unwrap().loose,
            2,
            "only the commit and the tag are loose"
        );
    }
}

#[test]
fn tag_and_commit_are_named_the_seeds_way() {
    let env = Env::new();
    let tree = PortageTree::small(5);
    let (dir, file) = env.snapshot(&tree, Compression::Xz);
    env.imports(&file, &[]);
    let upstream = fs::read_to_string(dir.join("metadata/timestamp.commit")).unwrap();
    let upstream = upstream.split_whitespace().next().unwrap();
    let tag = env.git(&["cat-file", "tag", "2026-08-20"]);
    assert!(tag.contains("\ntype commit\ntag 2026-08-20\ntagger portroot <portroot@localhost> 1787273100 +0000\n\nTagging 2026-08-20\n"), "{tag}");
    let commit = env.git(&["cat-file", "commit", "2026-08-20^{commit}"]);
    assert!(
        commit.contains("author portroot <portroot@localhost> 1787273100 +0000\n"),
        "{commit}"
    );
    assert!(
        commit.contains("\n\nUpdate portage tree to 2026-08-20\n\n"),
        "{commit}"
    );
    assert!(
        commit.contains(&format!("\nUpstream-Commit: {upstream}\n")),
        "{commit}"
    );
    let files = walk(&dir).len() - 1;
    assert!(commit.contains(&format!("\nFiles: {files}\n")), "{commit}");
    assert_eq!(
        env.git(&["rev-parse", "main"]),
        env.git(&["rev-parse", "2026-08-20^{commit}"])
    );
    assert_eq!(env.git(&["symbolic-ref", "HEAD"]), "refs/heads/main\n");

    // The next day's commit has the first as its parent.
    let (_, next) = env.snapshot(&tree.next_day(), Compression::Xz);
    let out = env.imports(&next, &[]);
    assert!(out.starts_with("imported 2026-08-21"), "{out}");
    assert_eq!(
        env.git(&["rev-parse", "2026-08-21^{commit}^"]),
        env.git(&["rev-parse", "2026-08-20^{commit}"])
    );
    env.fsck();
}

#[test]
fn same_tarballs_give_the_same_commits_everywhere() {
    let tree = PortageTree::small(8);
    let a = Env::new();
    let b = Env::new();
    let (_, xz0) = a.snapshot(&tree, Compression::Xz);
    let (_, xz1) = a.snapshot(&tree.next_day(), Compression::Xz);
    // The other store gets other compressions of the same trees.
    let (_, gz0) = b.snapshot(&tree, Compression::Gzip);
    let (_, zst1) = b.snapshot(&tree.next_day(), Compression::Zstd);
    for (env, files) in [(&a, [&xz0, &xz1]), (&b, [&gz0, &zst1])] {
        for f in files {
            env.imports(f, &[]);
        }
    }
    for rev in ["2026-08-20", "2026-08-21", "main", "2026-08-21^{commit}"] {
        assert_eq!(
            a.git(&["rev-parse", rev]),
            b.git(&["rev-parse", rev]),
            "{rev}"
        );
    }
}

#[test]
fn reimport_is_a_no_op() {
    let env = Env::new();
    let (_, file) = env.snapshot(&PortageTree::small(2), Compression::Xz);
    env.imports(&file, &[]);
    let before = env.state();
    let out = env.imports(&file, &[]);
    assert!(out.starts_with("no newer snapshot"), "{out}");
    assert_eq!(env.state(), before);
}

#[test]
fn older_snapshots_need_allow_older_and_changed_trees_need_force() {
    let env = Env::new();
    let tree = PortageTree::small(4);
    let (_, day0) = env.snapshot(&tree, Compression::Gzip);
    let (_, day1) = env.snapshot(&tree.next_day(), Compression::Gzip);
    env.imports(&day1, &[]);
    env.refused(
        &day0,
        &[],
        "older than the newest imported snapshot 2026-08-21",
    );
    let out = env.imports(&day0, &["--allow-older"]);
    assert!(out.contains("main unmoved"), "{out}");
    assert_eq!(
        env.git(&["rev-parse", "main"]),
        env.git(&["rev-parse", "2026-08-21^{commit}"])
    );
    env.fsck();

    // Same date, different tree: refused, then replaced with --force.
    let dir = env.tree(&tree.next_day());
    fs::write(dir.join("profiles/package.mask"), "# respun\n").unwrap();
    let respun = pack_snapshot(&dir, "respun", Compression::Gzip, &env.scratch("out")).unwrap();
    env.refused(
        &respun,
        &[],
        "tag 2026-08-21 already exists with a different tree",
    );
    let out = env.imports(&respun, &["--force"]);
    assert!(out.contains("replaced the old tag"), "{out}");
    assert_eq!(
        env.git(&["show", "2026-08-21:profiles/package.mask"]),
        "# respun\n"
    );
    assert_eq!(
        env.git(&["rev-parse", "main"]),
        env.git(&["rev-parse", "2026-08-21^{commit}"])
    );
    env.fsck();
}

#[test]
fn gitignore_is_never_honoured_and_old_portage_top_dirs_work() {
    let env = Env::new();
    let tree = PortageTree::small(9);
    let dir = env.tree(&tree);
    assert!(fs::read_to_string(dir.join(".gitignore"))
        .unwrap()
        .contains("md5-cache"));
    let file = pack_snapshot_with_top(
        &dir,
        "portage-20260821",
        "portage",
        Compression::Bzip2,
        &env.scratch("out"),
    )
    .unwrap();
    env.imports(&file, &[]);
    let cache = env.git(&[
        "ls-tree",
        "-r",
        "--name-only",
        "2026-08-20",
        "metadata/md5-cache",
    ]);
    let want = walk(&dir)
        .keys()
        .filter(|k| k.starts_with("metadata/md5-cache/"))
        .count();
    assert_eq!(cache.lines().count(), want);
    let root = env.git(&["ls-tree", "--name-only", "2026-08-20"]);
    assert!(
        !root.lines().any(|l| l == ".gitignore" || l == "portage"),
        "{root}"
    );
}

/// A tarball of the small fixture tree plus whatever `extra` appends, with a
/// top directory `gentoo`, uncompressed or xz.
fn crafted(
    env: &Env,
    tree: &PortageTree,
    xz: bool,
    extra: impl FnOnce(&mut tar::Builder<Vec<u8>>),
) -> PathBuf {
    let dir = env.tree(tree);
    let plain = pack_snapshot(
        &dir,
        &tree.snapshot_stem(),
        Compression::None,
        &env.scratch("out"),
    )
    .unwrap();
    let mut bytes = fs::read(&plain).unwrap();
    // Drop the end-of-archive blocks, append entries, and end it again.
    while bytes.len() >= 512 && bytes[bytes.len() - 512..].iter().all(|b| *b == 0) {
        bytes.truncate(bytes.len() - 512);
    }
    let mut b = tar::Builder::new(bytes);
    extra(&mut b);
    let bytes = b.into_inner().unwrap();
    let out = env.scratch("crafted").join(if xz {
        "gentoo-x.tar.xz"
    } else {
        "gentoo-x.tar"
    });
    if xz {
        let mut enc = xz2::write::XzEncoder::new(fs::File::create(&out).unwrap(), 1);
        enc.write_all(&bytes).unwrap();
        enc.finish().unwrap();
    } else {
        fs::write(&out, bytes).unwrap();
    }
    out
}

/// Append an entry with exactly these name and link bytes, bypassing the
/// tar crate's own path checks.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &[u8],
    link: &[u8],
    data: &[u8],
) {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A store holding the day-0 snapshot, and the day-1 tree to craft bad input from.
fn store_with_one_snapshot() -> (Env, PortageTree) {
    let env = Env::new();
    let tree = PortageTree::small(21);
    let (_, file) = env.snapshot(&tree, Compression::Gzip);
    env.imports(&file, &[]);
    (env, tree.next_day())
}

#[test]
fn bad_entries_are_refused_naming_the_entry() {
    let (env, next) = store_with_one_snapshot();
    type Craft = Box<dyn FnOnce(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, Craft)> = vec![
        (
            "\"gentoo-20260822/../../etc/x\": path contains \"..\"",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Regular,
                    b"gentoo-20260822/../../etc/x",
                    b"",
                    b"x",
                )
            }),
        ),
        (
            "\"/etc/passwd\": absolute path",
            Box::new(|b| raw_entry(b, tar::EntryType::Regular, b"/etc/passwd", b"", b"x")),
        ),
        (
            "\"gentoo-20260822/profiles/evil\": symlink target \"../../x\" escapes",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Symlink,
                    b"gentoo-20260822/profiles/evil",
                    b"../../x",
                    b"",
                )
            }),
        ),
        (
            "\"gentoo-20260822/evil\": symlink to absolute path \"/etc/shadow\"",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Symlink,
                    b"gentoo-20260822/evil",
                    b"/etc/shadow",
                    b"",
                )
            }),
        ),
        (
            "\"gentoo-20260822/dev/null\": device node",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Char,
                    b"gentoo-20260822/dev/null",
                    b"",
                    b"",
                )
            }),
        ),
        (
            "\"gentoo-20260822/dev/sda\": device node",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Block,
                    b"gentoo-20260822/dev/sda",
                    b"",
                    b"",
                )
            }),
        ),
        (
            "\"gentoo-20260822/pipe\": fifo",
            Box::new(|b| raw_entry(b, tar::EntryType::Fifo, b"gentoo-20260822/pipe", b"", b"")),
        ),
        (
            "\"gentoo-20260822/caf\\xe9\": path is not UTF-8",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Regular,
                    b"gentoo-20260822/caf\xe9",
                    b"",
                    b"x",
                )
            }),
        ),
        (
            "\"gentoo-20260822/header.txt\": duplicate path",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Regular,
                    b"gentoo-20260822/header.txt",
                    b"",
                    b"again",
                )
            }),
        ),
        (
            "\"other/file\": second top-level entry",
            Box::new(|b| raw_entry(b, tar::EntryType::Regular, b"other/file", b"", b"x")),
        ),
        (
            "\"gentoo-20260822/hl\": hardlink to \"nothing\", which is not a regular file in the snapshot",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Link,
                    b"gentoo-20260822/hl",
                    b"gentoo-20260822/nothing",
                    b"",
                )
            }),
        ),
        (
            "\"gentoo-20260822/hl\": hardlink to \"/etc/passwd\", outside",
            Box::new(|b| {
                raw_entry(
                    b,
                    tar::EntryType::Link,
                    b"gentoo-20260822/hl",
                    b"/etc/passwd",
                    b"",
                )
            }),
        ),
    ];
    for (i, (expected, craft)) in cases.into_iter().enumerate() {
        let file = crafted(&env, &next, i % 2 == 0, craft);
        let err = env.refused(&file, &[], expected);
        assert!(err.starts_with("portroot: error: importing "), "{err}");
    }
}

#[test]
fn broken_streams_are_refused() {
    let (env, next) = store_with_one_snapshot();
    let (_, good) = env.snapshot(&next, Compression::Xz);
    let bytes = fs::read(&good).unwrap();
    let dir = env.scratch("broken");
    // Cut in the middle, and cut just before xz's end (after the tar ended).
    for (name, len) in [
        ("mid.tar.xz", bytes.len() / 2),
        ("end.tar.xz", bytes.len() - 8),
    ] {
        let f = dir.join(name);
        fs::write(&f, &bytes[..len]).unwrap();
        env.refused(&f, &[], "corrupt, truncated or not a tar");
    }
    let f = dir.join("notes.txt");
    fs::write(
        &f,
        "these are not the tarballs you are looking for\n".repeat(40),
    )
    .unwrap();
    env.refused(&f, &[], "corrupt, truncated or not a tar");
    let f = dir.join("empty.tar");
    fs::write(&f, [0u8; 1024]).unwrap();
    env.refused(&f, &[], "contains no files");
}

#[test]
fn timestamp_is_required_unless_dated() {
    let (env, next) = store_with_one_snapshot();
    let dir = env.tree(&next);
    fs::remove_file(dir.join("metadata/timestamp.x")).unwrap();
    let file = pack_snapshot(&dir, "undated", Compression::Zstd, &env.scratch("out")).unwrap();
    env.refused(
        &file,
        &[],
        "has no metadata/timestamp.x to date the snapshot (give --date YYYY-MM-DD)",
    );
    env.refused(
        &file,
        &["--date", "2026-02-30"],
        "invalid date \"2026-02-30\"",
    );
    let out = env.imports(&file, &["--date", "2026-09-01"]);
    assert!(out.starts_with("imported 2026-09-01"), "{out}");
    assert!(env
        .git(&["cat-file", "commit", "2026-09-01"])
        .contains(" 1788307200 +0000"));
}

#[test]
fn md5_mismatch_is_refused() {
    let (env, next) = store_with_one_snapshot();
    let (_, file) = env.snapshot(&next, Compression::Xz);
    let md5 = PathBuf::from(format!("{}.md5sum", file.display()));
    let good = fs::read_to_string(&md5).unwrap();
    fs::write(&md5, format!("{}  {}", "0".repeat(32), &good[34..])).unwrap();
    env.refused(&file, &[], "md5 mismatch for");
    // --no-verify skips it, loudly.
    let out = util::run(&mut env.import(&file, &["--no-verify"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --no-verify"));
    // An explicit --md5sum file wins over a wrong FILE.md5sum.
    let (_, day2) = env.snapshot(&next.next_day(), Compression::Xz);
    let default = PathBuf::from(format!("{}.md5sum", day2.display()));
    let right = env.scratch("sums").join("right.md5");
    fs::rename(&default, &right).unwrap();
    fs::write(&default, format!("{}  x\n", "1".repeat(32))).unwrap();
    let out = env.imports(&day2, &["--md5sum", right.to_str().unwrap()]);
    assert!(out.starts_with("imported 2026-08-22"), "{out}");
}

#[test]
fn signatures_are_checked_with_gpgv() {
    let (env, next) = store_with_one_snapshot();
    let gpg = util::Gpg::new();
    let keyring = env.scratch("keys").join("gentoo-release.gpg");
    gpg.keyring(&keyring);
    let key = keyring.to_str().unwrap();
    let (_, file) = env.snapshot(&next, Compression::Xz);

    env.refused(&file, &["--keyring", key], "no signature file");
    // A signature of something else is a bad signature.
    gpg.sign(&PathBuf::from(format!("{}.md5sum", file.display())));
    fs::rename(
        format!("{}.md5sum.gpgsig", file.display()),
        format!("{}.gpgsig", file.display()),
    )
    .unwrap();
    env.refused(&file, &["--keyring", key], "signature check of");
    // Signed by a key the keyring does not hold.
    let stranger = util::Gpg::new();
    stranger.sign(&file);
    env.refused(&file, &["--keyring", key], "signature check of");

    gpg.sign(&file);
    let out = env.imports(&file, &["--keyring", key]);
    assert!(out.starts_with("imported 2026-08-21"), "{out}");
}

#[test]
fn hardlinks_become_files_with_the_linked_content() {
    let (env, next) = store_with_one_snapshot();
    let file = crafted(&env, &next, true, |b| {
        raw_entry(
            b,
            tar::EntryType::Link,
            b"gentoo-20260822/linked.txt",
            b"gentoo-20260822/header.txt",
            b"",
        )
    });
    env.imports(&file, &[]);
    assert_eq!(
        env.git(&["show", "2026-08-21:linked.txt"]),
        env.git(&["show", "2026-08-21:header.txt"])
    );
}

/// Hold the import lock the way a running import does.
fn hold_lock(env: &Env) -> fs::File {
    fs::create_dir_all(env.store.join("tmp")).unwrap();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.store.join("tmp/gentoo.git.lock"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

#[test]
fn a_held_lock_waits_or_fails_with_no_wait() {
    let (env, next) = store_with_one_snapshot();
    let (_, file) = env.snapshot(&next, Compression::Gzip);
    let lock = hold_lock(&env);
    env.refused(
        &file,
        &["--no-wait"],
        "another import into gentoo is running",
    );
    let mut child = env
        .import(&file, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("waiting for another import into gentoo"),
        "{line}"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("imported 2026-08-21"));
}

#[test]
fn racing_imports_never_leave_a_half_written_ref() {
    let (env, next) = store_with_one_snapshot();
    let (_, day1) = env.snapshot(&next, Compression::Xz);
    let (_, day2) = env.snapshot(&next.next_day(), Compression::Xz);
    let children: Vec<_> = [&day1, &day2, &day2]
        .iter()
        .map(|f| {
            env.import(f, &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // day1 loses if day2 got there first: then it is older, and refused.
        assert!(
            out.status.success() || text.contains("is older than"),
            "{text}"
        );
    }
    env.fsck();
    assert_eq!(
        env.git(&["rev-parse", "main"]),
        env.git(&["rev-parse", "2026-08-22^{commit}"])
    );
    assert!(env.git(&["tag"]).lines().count() >= 2);
}

#[test]
fn list_and_diff_show_snapshots_and_package_changes() {
    let env = Env::new();
    util::fails(env.portroot().args(["snapshot", "list"]), 1)
        .contains("no snapshot repository")
        .then_some(())
        .expect("missing repo error");
    let tree = PortageTree::small(6);
    let (old_dir, day0) = env.snapshot(&tree, Compression::Xz);
    let (new_dir, day1) = env.snapshot(&tree.next_day(), Compression::Xz);
    env.imports(&day0, &[]);
    env.imports(&day1, &[]);

    let list = util::ok(env.portroot().args(["snapshot", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    let files0 = walk(&old_dir).len() - 1;
    let short0 = &env.git(&["rev-parse", "2026-08-20^{commit}"])[..7];
    assert_eq!(lines[0], format!("2026-08-20  {short0}  {files0} files"));
    assert!(lines[1].starts_with("2026-08-21  "));

    // Expected changes, from the two trees on disk.
    let (old, new) = (walk(&old_dir), walk(&new_dir));
    let pkgs = |t: &BTreeMap<String, (u32, Vec<u8>)>| -> std::collections::BTreeSet<String> {
        t.keys()
            .filter(|k| k.ends_with(".ebuild") && k.matches('/').count() == 2)
            .map(|k| k.rsplit_once('/').unwrap().0.to_owned())
            .collect()
    };
    let (p_old, p_new) = (pkgs(&old), pkgs(&new));
    let diff = util::ok(
        env.portroot()
            .args(["snapshot", "diff", "2026-08-20", "2026-08-21"]),
    );
    for p in p_new.difference(&p_old) {
        assert!(
            diff.contains(&format!("\n+ {p}\n")),
            "{p} not added in:\n{diff}"
        );
    }
    for p in p_old.difference(&p_new) {
        assert!(
            diff.contains(&format!("\n- {p}\n")),
            "{p} not removed in:\n{diff}"
        );
    }
    let ebuild = |k: &str| {
        format!(
            "{}/{}",
            k.split('/').next().unwrap(),
            k.rsplit('/').next().unwrap().trim_end_matches(".ebuild")
        )
    };
    let changed: Vec<_> = new
        .iter()
        .filter(|(k, v)| k.ends_with(".ebuild") && old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| ebuild(k))
        .collect();
    for e in &changed {
        assert!(
            diff.contains(&format!("\n~ {e}\n")),
            "{e} not changed in:\n{diff}"
        );
    }
    assert!(
        diff.contains("eclass: 1 files changed") || diff.contains("eclass: "),
        "{diff}"
    );
    let stat =
        util::ok(
            env.portroot()
                .args(["snapshot", "diff", "--stat", "2026-08-20", "2026-08-21"]),
        );
    assert!(
        stat.starts_with(&format!(
            "packages: {} added, {} removed, ",
            p_new.difference(&p_old).count(),
            p_old.difference(&p_new).count()
        )),
        "{stat}"
    );
    assert!(!stat.contains("\n+ "), "{stat}");
    let err = util::fails(
        env.portroot()
            .args(["snapshot", "diff", "2026-08-20", "1999-01-01"]),
        1,
    );
    assert!(
        err.contains("no snapshot tag 1999-01-01 in gentoo"),
        "{err}"
    );
}

#[test]
fn help_explains_with_examples() {
    for sub in ["import", "list", "diff"] {
        let out = util::ok(Command::new(util::bin()).args(["snapshot", sub, "--help"]));
        assert!(
            out.contains(&format!("portroot snapshot {sub}")),
            "{sub}:\n{out}"
        );
    }
}

/// The store's `tmp/` entries whose name starts with `import-`.
fn import_scratch(env: &Env) -> Vec<String> {
    match fs::read_dir(env.store.join("tmp")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("import-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Start an import reading from a FIFO that delivers the first half of
/// `file` and then stalls, and wait until the import has made its scratch
/// directory. Returns the child and a sender whose drop closes the FIFO.
fn stalled_import(env: &Env, file: &Path) -> (std::process::Child, std::sync::mpsc::Sender<()>) {
    let fifo = env.scratch("fifo").join("gentoo-stalled.tar.xz");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path; no memory is shared.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut head = fs::read(file).unwrap();
    head.truncate(head.len() / 2);
    let child = env
        .import(&fifo, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (hold, until) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let _ = w.write_all(&head);
        // Hold the pipe open, with no EOF, until the test is done.
        let _ = until.recv();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while import_scratch(env).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch directory appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, hold)
}

#[test]
fn interrupted_imports_leave_no_scratch_and_gc_clears_killed_ones() {
    let (env, next) = store_with_one_snapshot();
    let (_, file) = env.snapshot(&next, Compression::Xz);
    let before = env.state();

    // Ctrl-C and SIGTERM: the import removes its scratch directory and exits
    // 130 or 143, as a shell reports the signal.
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let (child, writer) = stalled_import(&env, &file);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(writer);
        assert_eq!(out.status.code(), Some(128 + sig as i32), "{sig}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("interrupted"),
            "{out:?}"
        );
        assert_eq!(import_scratch(&env), Vec::<String>::new(), "{sig}");
        assert_eq!(env.state(), before, "{sig}");
    }

    // SIGKILL leaves the directory; gc knows its process is gone.
    let (mut child, writer) = stalled_import(&env, &file);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(writer);
    assert_eq!(import_scratch(&env).len(), 1);
    util::ok(env.portroot().args(["gc"]));
    assert_eq!(import_scratch(&env), Vec::<String>::new());
    assert_eq!(env.state(), before);
    env.fsck();

    // And the snapshot still imports.
    env.imports(&file, &[]);
}
