//! What an attacker found on the release binary, each bounded in time:
//! signals in the middle of `stage add` and `stage export`, a new mount on a
//! path whose previous mount was just removed from outside, configuration
//! values that were only refused when used, and a hostile `snapshot fetch`
//! remote.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;

/// Wait (bounded) until `cond` holds; panics naming `what` otherwise.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait (bounded) for `child` to end; kills it and panics on timeout.
fn wait_child(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for portroot") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).expect("reading stderr");
            }
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("portroot did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, sig).expect("sending the signal");
}

/// The names in `dir` (none if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Assert one line on stderr, and return it.
fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    lines[0]
}

/// A plain tar of a root directory with `files` small files in 100
/// directories and `big` bytes of incompressible data in one file.
fn stage_tarball(out: &Path, files: usize, big: usize) {
    let f = fs::File::create(out).expect("creating the tarball");
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("appending");
    };
    add("./", tar::EntryType::Directory, 0o755, b"");
    for d in 0..100 {
        add(
            &format!("./d{d:03}/"),
            tar::EntryType::Directory,
            0o755,
            b"",
        );
    }
    for i in 0..files {
        let data = format!("file {i}\n");
        add(
            &format!("./d{:03}/f{i:06}", i % 100),
            tar::EntryType::Regular,
            0o644,
            data.as_bytes(),
        );
    }
    if big > 0 {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..big)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        add("./big.bin", tar::EntryType::Regular, 0o644, &data);
    }
    b.into_inner()
        .expect("finishing the tarball")
        .flush()
        .expect("flushing");
}

/// `stage add` of a big tarball, interrupted by `sig` mid-unpack.
fn interrupted_stage_add(sig: nix::sys::signal::Signal, code: i32) {
    if !util::require_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tarball = tmp.path().join("big-stage.tar");
    stage_tarball(&tarball, 60_000, 0);
    let mut child = util::portroot(&store)
        .args(["stage", "add"])
        .arg(&tarball)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning stage add");
    // Mid-unpack: the scratch directory holds some of the files.
    let scratch = store.join("tmp");
    wait_until("the unpack to start", Duration::from_secs(60), || {
        names(&scratch)
            .iter()
            .any(|n| n.starts_with("stage-") && names(&scratch.join(n).join("rootfs")).len() > 10)
    });
    signal(&child, sig);
    let (status, err) = wait_child(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(code), "{status}: {err}");
    let line = one_line(&err);
    assert!(line.contains("interrupted"), "{line}");
    assert_eq!(names(&scratch), Vec::<String>::new(), "left in tmp/");
    assert_eq!(names(&store.join("stages")), Vec::<String>::new());
}

#[test]
fn hostile_sigint_of_stage_add_cleans_up_and_exits_130() {
    interrupted_stage_add(nix::sys::signal::Signal::SIGINT, 130);
}

#[test]
fn hostile_sigterm_of_stage_add_cleans_up_and_exits_143() {
    interrupted_stage_add(nix::sys::signal::Signal::SIGTERM, 143);
}

/// A store with a stage whose export takes a few seconds; returns (tmp,
/// store).
fn store_with_slow_export() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tarball = tmp.path().join("slow.tar");
    stage_tarball(&tarball, 2_000, 96 << 20);
    util::ok(
        util::portroot(&store)
            .args(["stage", "add", "--name", "slow"])
            .arg(&tarball),
    );
    fs::remove_file(&tarball).expect("removing the tarball");
    (tmp, store)
}

/// Start `stage export` of the slow stage to OUT and wait until its hidden
/// temporary file is there.
fn start_export(store: &Path, out: &Path) -> Child {
    let child = util::portroot(store)
        .args(["stage", "export", "--stage", "slow"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning stage export");
    let dir = out.parent().expect("parent");
    wait_until(
        "the export's temporary file",
        Duration::from_secs(60),
        || names(dir).iter().any(|n| n.starts_with(".out.tar.xz")),
    );
    child
}

fn interrupted_export(sig: nix::sys::signal::Signal, code: i32) {
    if !util::require_root() {
        return;
    }
    let (tmp, store) = store_with_slow_export();
    let outdir = tmp.path().join("out");
    fs::create_dir(&outdir).expect("mkdir");
    let out = outdir.join("out.tar.xz");
    let mut child = start_export(&store, &out);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, sig);
    let (status, err) = wait_child(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(code), "{status}: {err}");
    assert!(one_line(&err).contains("interrupted"), "{err}");
    assert_eq!(
        names(&outdir),
        Vec::<String>::new(),
        "left beside the output"
    );
    assert_eq!(
        names(&store.join("tmp")),
        Vec::<String>::new(),
        "left in tmp/"
    );
}

#[test]
fn hostile_sigint_of_stage_export_leaves_no_hidden_file() {
    interrupted_export(nix::sys::signal::Signal::SIGINT, 130);
}

#[test]
fn hostile_sigterm_of_stage_export_leaves_no_hidden_file() {
    interrupted_export(nix::sys::signal::Signal::SIGTERM, 143);
}

#[test]
fn hostile_gc_removes_what_a_killed_stage_export_left_beside_its_output() {
    if !util::require_root() {
        return;
    }
    let (tmp, store) = store_with_slow_export();
    let outdir = tmp.path().join("out");
    fs::create_dir(&outdir).expect("mkdir");
    fs::write(outdir.join("unrelated"), "keep me\n").expect("write");
    let out = outdir.join("out.tar.xz");
    let mut child = start_export(&store, &out);
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let (status, _) = wait_child(&mut child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(names(&outdir).len(), 2, "the hidden file is there");
    util::ok(util::portroot(&store).arg("gc"));
    assert_eq!(names(&outdir), ["unrelated"]);
    assert_eq!(
        names(&store.join("tmp")),
        Vec::<String>::new(),
        "left in tmp/"
    );
    // A finished export leaves nothing for gc either.
    util::ok(
        util::portroot(&store)
            .args(["stage", "export", "--stage", "slow"])
            .arg(&out),
    );
    assert_eq!(names(&outdir), ["out.tar.xz", "unrelated"]);
    assert_eq!(
        names(&store.join("tmp")),
        Vec::<String>::new(),
        "left in tmp/"
    );
}

/// A git repository with one tag `T1` holding a few files.
fn mount_fixture(dir: &Path) -> PathBuf {
    let git = |args: &[&str]| {
        util::ok(
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args),
        )
    };
    git(&["init", "-q", "-b", "main"]);
    for i in 0..20 {
        fs::write(dir.join(format!("f{i}")), format!("{i}\n")).expect("write");
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    git(&["tag", "T1"]);
    dir.join(".git")
}

fn is_mounted(at: &Path) -> bool {
    let at = at.to_string_lossy().into_owned();
    util::mountpoints().contains(&at)
}

/// `portroot mount` at `at`, removed from outside with `umount ARGS`, then
/// mounted again at once: the new mount must stay.
fn remount_after(umount_args: &[&str]) {
    if !util::require_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    fs::create_dir(&repo).expect("mkdir");
    let git_dir = mount_fixture(&repo);
    let store = tmp.path().join("store");
    let at = tmp.path().join("mnt");
    fs::create_dir(&at).expect("mkdir");
    let at = at.canonicalize().expect("canonical");
    let mount = || {
        util::ok(
            util::portroot(&store)
                .args(["mount", "--tag", "T1", "--git-dir"])
                .arg(&git_dir)
                .arg(&at),
        )
    };
    mount();
    util::ok(Command::new("umount").args(umount_args).arg(&at));
    mount();
    let until = Instant::now() + Duration::from_millis(2500);
    let mut gone = None;
    while Instant::now() < until {
        if !is_mounted(&at) || fs::read(at.join("f3")).ok().as_deref() != Some(b"3\n") {
            gone = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Clean up whatever happened, then judge.
    let _ = util::portroot(&store).arg("umount").arg(&at).output();
    while is_mounted(&at) {
        let _ = Command::new("umount").arg("-l").arg(&at).status();
    }
    assert!(gone.is_none(), "the second mount vanished");
    wait_until("the daemons to exit", Duration::from_secs(10), || {
        util::processes_mentioning(&at.to_string_lossy()).is_empty()
    });
}

#[test]
fn hostile_remount_right_after_umount_stays_mounted() {
    remount_after(&[]);
}

#[test]
fn hostile_remount_right_after_lazy_umount_stays_mounted() {
    remount_after(&["-l"]);
}

/// `config show` with `text` as the config file: exit 2, one line naming
/// the file and `key`.
fn config_refused(text: &str, key: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("portroot.toml");
    fs::write(&file, text).expect("write");
    let err = util::fails(
        util::portroot(&tmp.path().join("store"))
            .arg("--config")
            .arg(&file)
            .args(["config", "show"]),
        2,
    );
    let line = one_line(&err);
    assert!(
        line.contains(&*file.to_string_lossy()) && line.contains(key),
        "{text:?}: {line}"
    );
}

#[test]
fn hostile_config_values_that_fail_later_are_refused_at_load() {
    for (text, key) in [
        ("[mount]\ncache_size = \"0\"\n", "cache_size"),
        ("[mount]\ncache_size = 0\n", "cache_size"),
        ("mirrors = [\"ftp://mirror.example/gentoo\"]\n", "mirror"),
        (
            "[run]\nmake_conf_lines = [\"A=1\\nB=2\"]\n",
            "make_conf_lines",
        ),
        ("[run]\nmake_conf_lines = [\"A=1\\r\"]\n", "make_conf_lines"),
        ("mirrors = []\n", "mirrors"),
    ] {
        config_refused(text, key);
    }
    // The same values on the command line are usage errors too.
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = util::fails(
        util::portroot(tmp.path())
            .args(["mount", "--cache-size", "0", "--all"])
            .arg(tmp.path()),
        2,
    );
    assert!(err.contains("cache-size"), "{err}");
    let err = util::fails(
        util::portroot(tmp.path()).args([
            "run",
            "--stage",
            "s",
            "--tag",
            "t",
            "--make-conf",
            "A=1\nB=2",
            "--",
            "true",
        ]),
        2,
    );
    assert!(err.contains("make-conf"), "{err}");
}

/// A bare repository made with git's own plumbing; `hostile` gets its path
/// and a function running git in it.
struct Remote {
    dir: tempfile::TempDir,
}

impl Remote {
    fn new() -> Remote {
        let r = Remote {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.git(&["init", "-q", "--bare", "-b", "main"], None);
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str], input: Option<&[u8]>) -> String {
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(self.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .env("GIT_COMMITTER_DATE", "1787359500 +0000")
            .env("GIT_AUTHOR_DATE", "1787359500 +0000")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.unwrap_or_default()).expect("stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn blob(&self, data: &[u8]) -> String {
        self.git(&["hash-object", "-w", "--stdin"], Some(data))
    }

    /// A tree object written byte for byte: `(mode, name, oid)` in the
    /// order given.
    fn raw_tree(&self, entries: &[(&str, &[u8], &str)]) -> String {
        let mut raw = Vec::new();
        for (mode, name, oid) in entries {
            raw.extend_from_slice(mode.as_bytes());
            raw.push(b' ');
            raw.extend_from_slice(name);
            raw.push(0);
            let bin: Vec<u8> = (0..20)
                .map(|i| u8::from_str_radix(&oid[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            raw.extend_from_slice(&bin);
        }
        self.git(
            &["hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
            Some(&raw),
        )
    }

    /// Commit `tree` on main and tag it `tag`.
    fn publish(&self, tree: &str, tag: &str) {
        let commit = self.git(&["commit-tree", "-m", "snapshot", tree], None);
        self.git(&["update-ref", "refs/heads/main", &commit], None);
        self.git(&["tag", "-a", "-m", "snapshot", tag, &commit], None);
    }
}

/// `snapshot fetch` from `remote` into a fresh store: exit 1, one line
/// mentioning `what`, nothing in the store.
fn fetch_refused(remote: &Remote, what: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let mut cmd = util::portroot(&store);
    cmd.args(["snapshot", "fetch"])
        .arg(remote.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning fetch");
    let (status, err) = wait_child(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    let line = one_line(&err);
    assert!(line.contains(what), "expected {what:?} in: {line}");
    assert_eq!(names(&store.join("repos")), Vec::<String>::new(), "repos/");
    // The import lock file stays, as after any import; nothing else.
    let tmp_left: Vec<String> = names(&store.join("tmp"))
        .into_iter()
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(tmp_left, Vec::<String>::new(), "tmp/");
}

#[test]
fn hostile_fetch_refuses_tags_that_are_not_snapshot_dates() {
    let remote = Remote::new();
    let a = remote.blob(b"a\n");
    let tree = remote.raw_tree(&[("100644", b"a", &a)]);
    remote.publish(&tree, "latest");
    fetch_refused(&remote, "latest");
}

#[test]
fn hostile_fetch_refuses_malformed_trees() {
    type Build = Box<dyn Fn(&Remote) -> String>;
    let cases: Vec<(&str, Build)> = vec![
        (
            "sorted",
            Box::new(|r: &Remote| {
                let a = r.blob(b"a\n");
                r.raw_tree(&[("100644", b"b", &a), ("100644", b"a", &a)])
            }),
        ),
        (
            "..",
            Box::new(|r: &Remote| {
                let a = r.blob(b"a\n");
                let sub = r.raw_tree(&[("100644", b"x", &a)]);
                r.raw_tree(&[("40000", b"..", &sub), ("100644", b"a", &a)])
            }),
        ),
        (
            "mode",
            Box::new(|r: &Remote| {
                let a = r.blob(b"a\n");
                r.raw_tree(&[("100600", b"a", &a)])
            }),
        ),
        (
            "escapes",
            Box::new(|r: &Remote| {
                let target = r.blob(b"../../etc/shadow");
                r.raw_tree(&[("120000", b"link", &target)])
            }),
        ),
        (
            "absolute",
            Box::new(|r: &Remote| {
                let target = r.blob(b"/etc/shadow");
                let sub = r.raw_tree(&[("120000", b"link", &target)]);
                r.raw_tree(&[("40000", b"sub", &sub)])
            }),
        ),
        (
            ".git",
            Box::new(|r: &Remote| {
                let a = r.blob(b"[core]\n");
                let git = r.raw_tree(&[("100644", b"config", &a)]);
                let sub = r.raw_tree(&[("40000", b".GIT", &git)]);
                r.raw_tree(&[("40000", b"sub", &sub)])
            }),
        ),
    ];
    for (what, build) in cases {
        let remote = Remote::new();
        let tree = build(&remote);
        remote.publish(&tree, "2026-08-21");
        fetch_refused(&remote, what);
    }
}

#[test]
fn hostile_snapshot_diff_into_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let remote = Remote::new();
    let mut entries = Vec::new();
    let blobs: Vec<String> = (0..3000)
        .map(|i| remote.blob(format!("{i}\n").as_bytes()))
        .collect();
    let mut names_: Vec<String> = (0..3000).map(|i| format!("f{i:05}")).collect();
    names_.sort();
    for (n, b) in names_.iter().zip(&blobs) {
        entries.push(("100644", n.as_bytes(), b.as_str()));
    }
    let one = remote.raw_tree(&entries[..10]);
    let two = remote.raw_tree(&entries);
    remote.publish(&one, "2026-08-20");
    remote.publish(&two, "2026-08-21");
    util::ok(
        util::portroot(&store)
            .args(["snapshot", "fetch"])
            .arg(remote.path()),
    );
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = util::portroot(&store)
        .args(["snapshot", "diff", "2026-08-20", "2026-08-21"])
        .stdout(Stdio::from(writer))
        .output()
        .expect("spawning diff");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
    // The same diff into a pipe that stays open counts every added file.
    let full =
        util::ok(util::portroot(&store).args(["snapshot", "diff", "2026-08-20", "2026-08-21"]));
    assert!(full.contains("2990 files changed"), "{full}");
}

#[test]
fn hostile_sigint_of_stage_rm_finishes_the_removal() {
    if !util::require_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let tarball = tmp.path().join("big-stage.tar");
    stage_tarball(&tarball, 60_000, 0);
    let scratch = store.join("tmp");
    // The removal may outrun the poll; a few tries catch it mid-way.
    let mut caught = false;
    for _ in 0..3 {
        util::ok(
            util::portroot(&store)
                .args(["stage", "add", "--name", "big"])
                .arg(&tarball),
        );
        let mut child = util::portroot(&store)
            .args(["stage", "rm", "big"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning stage rm");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut mid_way = false;
        while Instant::now() < deadline {
            if names(&scratch).iter().any(|n| n.starts_with("removing-")) {
                mid_way = child.try_wait().expect("try_wait").is_none();
                break;
            }
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if mid_way {
            signal(&child, nix::sys::signal::Signal::SIGINT);
        }
        let (status, err) = wait_child(&mut child, Duration::from_secs(60));
        let left: Vec<String> = names(&scratch)
            .into_iter()
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "left in tmp/ ({status}: {err})");
        assert!(
            !names(&store.join("stages")).iter().any(|n| n.len() == 64),
            "the stage is still there"
        );
        if mid_way && status.code() == Some(130) {
            assert!(one_line(&err).contains("interrupted"), "{err}");
            caught = true;
            break;
        }
        assert!(status.success(), "{status}: {err}");
    }
    assert!(caught, "never caught stage rm mid-way");
}
