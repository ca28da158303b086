//! What a hostile snapshot may try to put into the repository, through the
//! real binary on hand-made tarballs: symlink chains that leave the tree,
//! names and files git's fsck refuses, timestamps outside any sane window,
//! paths too deep for Linux. Each refusal is one line, exit 1, the store as it
//! was and no scratch left; each accepted import passes `git fsck --strict`.
//! Every command runs under a deadline that fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util;

const DAY: i64 = 86_400;

/// `metadata/timestamp.x` of the store's first snapshot: Fri Aug 21 00:45:00
/// 2026 UTC, tag 2026-08-20.
const TS0: i64 = 1_787_273_100;

/// The longest any one command may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// A finished command's exit code and output.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `cmd`, killing it and failing the test past [`DEADLINE`].
fn bounded(cmd: &mut Command) -> Ran {
    let (out, _) = util::run_within(cmd, DEADLINE);
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A tarball being made: entries with exactly the bytes given.
struct Tarball {
    b: tar::Builder<Vec<u8>>,
    top: String,
}

impl Tarball {
    /// A snapshot with top directory `gentoo-x/`, `metadata/timestamp.x`
    /// saying `timestamp`, and one ordinary file.
    fn new(timestamp: &str) -> Tarball {
        let mut t = Tarball {
            b: tar::Builder::new(Vec::new()),
            top: "gentoo-x".to_owned(),
        };
        t.dir("");
        t.file(
            "metadata/timestamp.x",
            format!("{timestamp} UTC\n").as_bytes(),
        );
        t.file("profiles/repo_name", b"gentoo\n");
        t
    }

    /// The usual snapshot of day `day` after [`TS0`].
    fn day(day: i64) -> Tarball {
        Tarball::new(&(TS0 + day * DAY).to_string())
    }

    fn full(&self, rel: &str) -> Vec<u8> {
        let mut p = format!("{}/{rel}", self.top).into_bytes();
        if rel.is_empty() {
            p.pop();
            p.push(b'/');
        }
        p
    }

    /// An entry of `kind` at `rel` (below the top directory), written with
    /// GNU long-name records when it does not fit the header, and never
    /// through the tar crate's own path checks.
    fn raw(&mut self, kind: tar::EntryType, rel: &str, link: &str, data: &[u8]) -> &mut Self {
        let name = self.full(rel);
        if link.len() > 100 {
            self.long_record(tar::EntryType::GNULongLink, link.as_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(TS0 as u64);
        h.set_uid(0);
        h.set_gid(0);
        let short = link.len().min(100);
        h.as_gnu_mut().unwrap().linkname[..short].copy_from_slice(&link.as_bytes()[..short]);
        if name.len() > 100 {
            self.long_record(tar::EntryType::GNULongName, &name);
        }
        let short = name.len().min(100);
        h.as_gnu_mut().unwrap().name[..short].copy_from_slice(&name[..short]);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// A GNU long-name (`L`) or long-link (`K`) record for the next entry.
    fn long_record(&mut self, kind: tar::EntryType, value: &[u8]) {
        let mut l = tar::Header::new_gnu();
        l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        l.set_entry_type(kind);
        l.set_mode(0o644);
        l.set_size(value.len() as u64 + 1);
        l.set_uid(0);
        l.set_gid(0);
        l.set_mtime(0);
        l.set_cksum();
        let mut long = value.to_vec();
        long.push(0);
        self.b.append(&l, &long[..]).unwrap();
    }

    fn file(&mut self, rel: &str, data: &[u8]) -> &mut Self {
        self.raw(tar::EntryType::Regular, rel, "", data)
    }

    fn dir(&mut self, rel: &str) -> &mut Self {
        self.raw(tar::EntryType::Directory, rel, "", b"")
    }

    fn symlink(&mut self, rel: &str, target: &str) -> &mut Self {
        self.raw(tar::EntryType::Symlink, rel, target, b"")
    }

    /// Write it to `dir/gentoo-x.tar`.
    fn write(self, dir: &Path) -> PathBuf {
        let file = dir.join("gentoo-x.tar");
        fs::write(&file, self.b.into_inner().unwrap()).unwrap();
        file
    }
}

/// One test's world: a store (with one snapshot imported, unless `empty`).
struct Env {
    tmp: tempfile::TempDir,
    n: std::cell::Cell<u32>,
}

impl Env {
    fn empty() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
            n: Default::default(),
        }
    }

    /// A store holding day 0's snapshot.
    fn new() -> Env {
        let env = Env::empty();
        let mut t = Tarball::day(0);
        t.file("eclass/.gitignore", b"*.swp\n");
        let file = t.write(&env.scratch());
        env.imported(&file, &[]);
        env
    }

    fn scratch(&self) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let d = self.tmp.path().join(format!("s{}", self.n.get()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn repo(&self) -> PathBuf {
        self.store().join("repos/gentoo.git")
    }

    fn run(&self, args: &[&str]) -> Ran {
        bounded(util::portroot(&self.store()).args(args))
    }

    fn import(&self, file: &Path, args: &[&str]) -> Ran {
        let mut all = vec!["snapshot", "import", file.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    fn git(&self, args: &[&str]) -> String {
        let ran = bounded(Command::new("git").arg("-C").arg(self.repo()).args(args));
        assert_eq!(ran.code, Some(0), "git {args:?}: {}", ran.stderr);
        ran.stdout
    }

    /// `git fsck --strict` finds nothing at all to say.
    fn fsck_clean(&self) {
        let ran = bounded(Command::new("git").arg("-C").arg(self.repo()).args([
            "fsck",
            "--strict",
            "--no-dangling",
            "--no-progress",
        ]));
        assert_eq!(ran.code, Some(0), "git fsck --strict: {}", ran.stderr);
        assert!(
            ran.stderr.trim().is_empty() && ran.stdout.trim().is_empty(),
            "git fsck --strict is not clean:\n{}{}",
            ran.stdout,
            ran.stderr
        );
    }

    /// Import `file`, which must succeed, and check the repository with
    /// `git fsck --strict`. Returns stdout.
    fn imported(&self, file: &Path, args: &[&str]) -> String {
        let ran = self.import(file, args);
        assert_eq!(
            ran.code,
            Some(0),
            "import of {} failed:\n{}",
            file.display(),
            ran.stderr
        );
        self.fsck_clean();
        ran.stdout
    }

    /// Everything in the repository and the store's tmp/: refs, object
    /// files, scratch.
    fn state(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for dir in [self.repo(), self.store().join("tmp")] {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                let Ok(rd) = fs::read_dir(&d) else { continue };
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p.clone());
                    }
                    let content = match p.is_file() {
                        true => fs::read(&p).unwrap_or_default().len(),
                        false => 0,
                    };
                    seen.push(format!("{} {content}", p.display()));
                }
            }
        }
        seen.sort();
        seen
    }

    /// Importing `file` with `args` fails with one line containing
    /// `expected`, exit 1, and changes nothing. Returns the line.
    fn refused(&self, file: &Path, args: &[&str], expected: &str) -> String {
        let before = self.state();
        let ran = self.import(file, args);
        assert_eq!(
            ran.code,
            Some(1),
            "import of {} with {args:?} should fail with 1:\n{}{}",
            file.display(),
            ran.stdout,
            ran.stderr
        );
        let err = ran.stderr;
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
        assert!(err.len() < 2000, "an unreadably long line:\n{err}");
        assert_eq!(self.state(), before, "the store changed");
        if self.repo().exists() {
            self.fsck_clean();
        }
        err
    }
}

#[test]
fn symlink_chains_that_leave_the_tree_are_refused_in_any_order() {
    let env = Env::new();
    type Shape = &'static [(&'static str, &'static str)];
    let escaping: &[(&str, Shape)] = &[
        // The attacker's: each link stays inside by its own text.
        ("a/esc", &[("a/up", ".."), ("a/esc", "up/..")]),
        // Through a link to a link to the root.
        (
            "a/d",
            &[("a/b/up2", "../.."), ("a/c", "b/up2"), ("a/d", "c/..")],
        ),
        // A chain across directories, each hop climbing back to the root.
        (
            "d/esc",
            &[
                ("d/l1", "../e/l2"),
                ("e/l2", "../f/l3"),
                ("f/l3", ".."),
                ("d/esc", "l1/.."),
            ],
        ),
        // A link whose own name is followed as a directory.
        ("x/y/z", &[("x/self", "."), ("x/y/z", "../self/../..")]),
    ];
    for (bad, links) in escaping {
        let orders: Vec<Vec<(&str, &str)>> =
            vec![links.to_vec(), links.iter().rev().copied().collect()];
        for order in orders {
            let mut t = Tarball::day(1);
            t.file("e/real", b"x").file("f/real", b"x").dir("a/b");
            for (link, target) in &order {
                t.symlink(link, target);
            }
            let file = t.write(&env.scratch());
            let err = env.refused(&file, &[], &format!("gentoo-x/{bad}\""));
            assert!(err.contains("escapes the snapshot"), "{order:?}: {err}");
        }
    }

    // A loop, and a chain longer than the kernel follows.
    let mut t = Tarball::day(1);
    t.symlink("loop/a", "b").symlink("loop/b", "a");
    env.refused(&t.write(&env.scratch()), &[], "more than 40 symlinks");
    let mut t = Tarball::day(1);
    for i in 0..41 {
        t.symlink(&format!("long/l{i}"), &format!("l{}", i + 1));
    }
    t.file("long/l41", b"end");
    env.refused(&t.write(&env.scratch()), &[], "more than 40 symlinks");

    // Chains that stay inside are kept, with a dangling link and 40 hops.
    let mut t = Tarball::day(1);
    t.file("profiles/base/make.defaults", b"USE=\"\"\n")
        .file("profiles/x/eapi", b"8\n")
        .symlink("profiles/x/parent", "../base")
        .symlink("link1", "profiles/x/parent")
        .symlink("link2", "link1/../x/eapi")
        .symlink("dangling", "nowhere/x")
        .symlink("through", "link1/../x/../base");
    for i in 0..39 {
        t.symlink(&format!("long/l{i}"), &format!("l{}", i + 1));
    }
    t.file("long/l39", b"end");
    let out = env.imported(&t.write(&env.scratch()), &[]);
    assert!(out.starts_with("imported 2026-08-21"), "{out}");
    assert_eq!(
        env.git(&["cat-file", "-p", "2026-08-21:link2"]),
        "link1/../x/eapi"
    );

    // Long targets through long chains, many times over: each link is walked
    // once, so this stays well inside the deadline, and the last hop out of
    // the tree is still found.
    let chains = |escape: bool| {
        let mut t = Tarball::day(2);
        let pad = "x/../".repeat(800);
        t.file("c/x/f", b"x");
        for i in 0..38 {
            t.symlink(&format!("c/l{i}"), &format!("{pad}l{}", i + 1));
        }
        t.symlink("c/l38", if escape { ".." } else { "x" });
        for j in 0..1000 {
            t.symlink(&format!("c/m{j}"), &format!("{pad}l0/.."));
        }
        t.write(&env.scratch())
    };
    let started = Instant::now();
    let err = env.refused(&chains(true), &[], "escapes the snapshot");
    assert!(err.contains("x/../x/../l0/..\" escapes"), "{err}");
    env.imported(&chains(false), &[]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn names_git_refuses_are_refused() {
    let env = Env::new();
    type Craft<'a> = &'a dyn Fn(&mut Tarball);
    let cases: &[(&str, Craft, &str)] = &[
        (
            ".gitmodules",
            &|t| {
                t.file(
                    ".gitmodules",
                    b"[submodule \"../../modules/evil\"]\n\tpath = x\n\turl = ./x\n",
                );
            },
            "is a .gitmodules",
        ),
        (
            ".gitmodules",
            &|t| {
                t.file(
                    ".gitmodules",
                    b"[submodule \"x\"]\n\tpath = x\n\turl = --upload-pack=touch${IFS}/tmp/pwned\n",
                );
            },
            "is a .gitmodules",
        ),
        (
            ".gitmodules",
            &|t| {
                t.symlink(".gitmodules", "profiles/repo_name");
            },
            "is a .gitmodules",
        ),
        (
            "sub/.GitModules. ",
            &|t| {
                t.file("sub/.GitModules. ", b"");
            },
            "is a .gitmodules",
        ),
        (
            "sub/gitmod~1",
            &|t| {
                t.file("sub/gitmod~1", b"");
            },
            "is a .gitmodules",
        ),
        (
            "eclass/.gitattributes",
            &|t| {
                t.symlink("eclass/.gitattributes", "../profiles/repo_name");
            },
            "not a plain file",
        ),
        (
            ".gitattributes/x",
            &|t| {
                t.file(".gitattributes/x", b"");
            },
            "not a plain file",
        ),
        (
            ".gitattributes",
            &|t| {
                t.file(
                    ".gitattributes",
                    format!("*{} text\n", "x".repeat(3000)).as_bytes(),
                );
            },
            "lines of 2048 bytes or more",
        ),
        (
            "a/.gitattributes",
            &|t| {
                t.raw(
                    tar::EntryType::Link,
                    "a/.gitattributes",
                    "gentoo-x/profiles/repo_name",
                    b"",
                );
            },
            "not a plain file",
        ),
        (
            "eclass/.gitignore",
            &|t| {
                t.symlink("eclass/.gitignore", "../profiles/repo_name");
            },
            "is a symlink",
        ),
        (
            ".mailmap",
            &|t| {
                t.symlink(".mailmap", "profiles/repo_name");
            },
            "is a symlink",
        ),
        // .git as HFS+ (ignorable code points) and NTFS (short names,
        // trailing dots and spaces, streams) would read it.
        (
            ".g\u{200d}it/config",
            &|t| {
                t.file(".g\u{200d}it/config", b"[core]\n");
            },
            "is a spelling of .git",
        ),
        (
            "a/\u{feff}.GIT/config",
            &|t| {
                t.file("a/\u{feff}.GIT/config", b"[core]\n");
            },
            "is a spelling of .git",
        ),
        (
            "git~1/config",
            &|t| {
                t.file("git~1/config", b"[core]\n");
            },
            "is a spelling of .git",
        ),
        (
            "a/.git. . /hooks",
            &|t| {
                t.file("a/.git. . /hooks", b"");
            },
            "is a spelling of .git",
        ),
        (
            "a/.git::$INDEX_ALLOCATION/x",
            &|t| {
                t.file("a/.git::$INDEX_ALLOCATION/x", b"");
            },
            "is a spelling of .git",
        ),
        (
            "a/x\\.git/y",
            &|t| {
                t.file("a/x\\.git/y", b"");
            },
            "is a spelling of .git",
        ),
    ];
    for (entry, craft, expected) in cases {
        let mut t = Tarball::day(1);
        craft(&mut t);
        let file = t.write(&env.scratch());
        let err = env.refused(&file, &[], expected);
        let shown = format!("\"gentoo-x/{}\"", entry.escape_debug());
        assert!(err.contains(&shown), "{shown} not named in: {err}");
    }

    // What git accepts is kept: a plain .gitattributes, a nested .gitignore,
    // names that only look alike.
    let mut t = Tarball::day(1);
    t.file(".gitattributes", b"*.ebuild text eol=lf\n")
        .file("eclass/.gitignore", b"*.swp\n")
        .file("a/.gitkeep", b"")
        .file("a/git~1x/y", b"")
        .file("a/.github/z", b"")
        .file("a/.mailmap", b"A <a@b>\n");
    env.imported(&t.write(&env.scratch()), &[]);
}

#[test]
fn timestamps_outside_the_window_are_refused() {
    let env = Env::new();
    let before = env.git(&["for-each-ref"]);
    let file = |ts: &str| Tarball::new(ts).write(&env.scratch());
    env.refused(
        &file("9223372036854775807"),
        &[],
        "past 2106-02-07, beyond what a git commit time holds",
    );
    env.refused(
        &file("9223372036854775807"),
        &["--allow-future"],
        "past 2106-02-07",
    );
    env.refused(&file("946684799"), &[], "before 2000-01-01");
    env.refused(&file("86400"), &["--allow-future"], "before 2000-01-01");
    // A tarball without timestamp.x, dated on the command line.
    let mut t = Tarball {
        b: tar::Builder::new(Vec::new()),
        top: "gentoo-y".to_owned(),
    };
    t.dir("").file("profiles/repo_name", b"gentoo\n");
    let undated = t.write(&env.scratch());
    env.refused(&undated, &["--date", "1999-12-30"], "before 2000-01-01");

    // A day past the clock is tolerated (mirrors stamp just after
    // midnight); three days are not, unless the clock is said to be behind.
    let now = now();
    let future = file(&(now + 3 * DAY).to_string());
    let err = env.refused(&future, &[], "more than a day past this machine's clock");
    assert!(err.contains("--allow-future"), "{err}");
    let tomorrow = SnapshotDay(now + 2 * DAY).to_string();
    env.refused(
        &undated,
        &["--date", &tomorrow],
        "more than a day past this machine's clock",
    );
    assert_eq!(env.git(&["for-each-ref"]), before);
    let out = env.imported(&future, &["--allow-future"]);
    assert!(
        out.starts_with(&format!("imported {}", SnapshotDay(now + 2 * DAY))),
        "{out}"
    );
    let commit = env.git(&["cat-file", "commit", "main"]);
    assert!(
        commit.contains(&format!(" {} +0000\n", now + 3 * DAY)),
        "{commit}"
    );
}

/// The clock, in unix seconds.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The UTC date of a unix time, as a tag is named.
struct SnapshotDay(i64);

impl std::fmt::Display for SnapshotDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = portroot::snapshot::tag::SnapshotDate::from_timestamp(self.0 + DAY);
        write!(f, "{d}")
    }
}

#[test]
fn sync_refuses_a_future_snapshot_unless_allowed() {
    let env = Env::new();
    let yesterday = portroot::snapshot::sync::yesterday_utc();
    let name = format!(
        "gentoo-{:04}{:02}{:02}.tar",
        yesterday.year, yesterday.month, yesterday.day
    );
    let mirror = env.scratch();
    fs::create_dir_all(mirror.join("snapshots")).unwrap();
    let now = now();
    let built = Tarball::new(&(now + 5 * DAY).to_string()).write(&env.scratch());
    let xz = mirror.join("snapshots").join(format!("{name}.xz"));
    let mut enc = xz2::write::XzEncoder::new(fs::File::create(&xz).unwrap(), 1);
    std::io::copy(&mut fs::File::open(&built).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let sum = bounded(Command::new("md5sum").arg(&xz));
    let hex = sum.stdout.split_whitespace().next().unwrap().to_owned();
    fs::write(
        mirror.join("snapshots").join(format!("{name}.xz.md5sum")),
        format!("{hex}  {name}.xz\n"),
    )
    .unwrap();
    let before = env.state();
    let m = mirror.to_str().unwrap();
    let ran = env.run(&["snapshot", "sync", "--mirror", m, "--max-age-days", "2"]);
    assert_eq!(ran.code, Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr
            .contains("more than a day past this machine's clock"),
        "{}",
        ran.stderr
    );
    assert_eq!(env.state(), before, "the store changed");
    let ran = env.run(&[
        "snapshot",
        "sync",
        "--mirror",
        m,
        "--max-age-days",
        "2",
        "--allow-future",
    ]);
    assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
    env.fsck_clean();
}

/// `depth` directories `d/d/.../d` and a file in the deepest.
fn deep(depth: usize) -> String {
    let mut p = "d/".repeat(depth);
    p.push('f');
    p
}

#[test]
fn paths_too_deep_for_linux_are_refused_not_a_crash() {
    let env = Env::new();
    // 100,000 levels as one long name; 3,000 as a directory entry per level.
    let mut t = Tarball::day(1);
    t.file(&deep(100_000), b"deep");
    let err = env.refused(
        &t.write(&env.scratch()),
        &[],
        "longer than Linux can open (PATH_MAX 4096)",
    );
    assert!(err.contains("(200010 bytes)"), "{err}");
    let mut t = Tarball::day(1);
    let mut p = String::new();
    for _ in 0..3_000 {
        p.push_str("d/");
        t.dir(&p);
    }
    env.refused(&t.write(&env.scratch()), &[], "PATH_MAX 4096");
    let mut t = Tarball::day(1);
    t.file(&format!("a/{}", "n".repeat(256)), b"");
    env.refused(
        &t.write(&env.scratch()),
        &[],
        "longer than Linux allows (255)",
    );

    // The deepest a path may go is imported, and git reads it back.
    let mut t = Tarball::day(1);
    let deepest = deep(2047);
    assert_eq!(deepest.len(), 4095);
    t.file(&deepest, b"deepest");
    env.imported(&t.write(&env.scratch()), &[]);
    assert_eq!(
        env.git(&["cat-file", "-p", &format!("2026-08-21:{deepest}")]),
        "deepest"
    );
}

#[test]
fn stage_add_refuses_a_path_too_deep_in_one_short_line() {
    if !util::require_root() {
        return;
    }
    let env = Env::empty();
    let mut t = Tarball {
        b: tar::Builder::new(Vec::new()),
        top: ".".to_owned(),
    };
    t.dir("")
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    t.file(&deep(100_000), b"deep");
    let file = t.write(&env.scratch());
    let ran = env.run(&["stage", "add", file.to_str().unwrap(), "--name", "deep"]);
    assert_eq!(ran.code, Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("longer than Linux can open"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    assert!(ran.stderr.len() < 1000, "an unreadably long line");
    let list = env.run(&["stage", "list"]);
    assert!(!list.stdout.contains("deep"), "{}", list.stdout);
    let left: Vec<_> = fs::read_dir(env.store().join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left: {left:?}");
}
