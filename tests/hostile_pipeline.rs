//! The snapshot import pipeline under hostile input, through the real binary:
//! an error in any of its threads ends the import at once with one line, the
//! lock released and the store as it was; endless input ends; what is signed
//! is what is imported. Every import here runs under a time bound.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portroot::fixture::portage::{pack_snapshot, PortageTree};
use portroot_runner::archive::Compression;

use crate::util;

/// How long any one command may take before the test fails. Generous for a
/// debug build on a loaded machine; the hangs this guards against never end.
const BOUND: Duration = Duration::from_secs(30);

/// How long a refused import of a few MB may take, the fault found early.
const QUICK: Duration = Duration::from_secs(5);

/// A store and room for tarballs.
struct Env {
    tmp: tempfile::TempDir,
    store: PathBuf,
}

/// What a refused import must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct RepoState {
    refs: String,
    objects: Vec<String>,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Env { tmp, store }
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn repo(&self) -> PathBuf {
        self.store.join("repos/gentoo.git")
    }

    fn import(&self, file: &Path, args: &[&str]) -> Command {
        let mut c = util::portroot(&self.store);
        c.args(["snapshot", "import", "--no-wait"])
            .args(args)
            .arg(file);
        c
    }

    /// Pack `tree` as the mirrors do (with its .md5sum).
    fn snapshot(&self, tree: &PortageTree, c: Compression, name: &str) -> PathBuf {
        let dir = self.dir(&format!("{name}-tree"));
        tree.write_tree(&dir).unwrap();
        pack_snapshot(&dir, &tree.snapshot_stem(), c, &self.dir(name)).unwrap()
    }

    /// Import `file`, which must succeed within the bound.
    fn imports(&self, file: &Path, args: &[&str]) -> String {
        let (out, _) = util::run_within(&mut self.import(file, args), BOUND);
        assert!(out.status.success(), "import of {file:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self) -> Option<RepoState> {
        if !self.repo().exists() {
            return None;
        }
        let refs = util::ok(
            Command::new("git")
                .arg("-C")
                .arg(self.repo())
                .args(["for-each-ref", "--format=%(refname) %(objectname)"]),
        );
        let mut objects = Vec::new();
        walk_files(&self.repo().join("objects"), &mut objects);
        objects.sort();
        Some(RepoState { refs, objects })
    }

    /// `git fsck --strict` is clean, if there is a repository.
    fn fsck(&self) {
        if self.repo().exists() {
            util::ok(Command::new("git").arg("-C").arg(self.repo()).args([
                "fsck",
                "--strict",
                "--no-dangling",
            ]));
        }
    }

    /// Nothing in the store's `tmp/` but the import locks.
    fn assert_no_scratch(&self) {
        let left: Vec<String> = fs::read_dir(self.store.join("tmp"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".git.lock"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "left in the store's tmp/: {left:?}");
    }

    /// Import `file` with `args`: it must fail within `bound`, with exit 1 and
    /// one line naming `expected`, leaving the store as it was. Returns the line.
    fn refused_within(
        &self,
        file: &Path,
        args: &[&str],
        expected: &str,
        bound: Duration,
    ) -> String {
        let before = self.state();
        let (out, took) = util::run_within(&mut self.import(file, args), bound);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{file:?}: {out:?}");
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("portroot: warning:"))
            .collect();
        assert_eq!(errors.len(), 1, "not one line:\n{err}");
        assert!(
            errors[0].starts_with("portroot: error:") && errors[0].contains(expected),
            "expected {expected:?} in:\n{err}"
        );
        assert!(took < bound, "took {took:?}");
        assert_eq!(self.state(), before, "the repository changed");
        self.fsck();
        self.assert_no_scratch();
        errors[0].to_owned()
    }

    fn refused(&self, file: &Path, args: &[&str], expected: &str) -> String {
        self.refused_within(file, args, expected, BOUND)
    }
}

fn walk_files(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            walk_files(&e.path(), out);
        } else {
            out.push(e.path().to_string_lossy().into_owned());
        }
    }
}

/// A tar builder for a snapshot with top directory `gentoo` and a timestamp.
fn snapshot_builder() -> tar::Builder<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    add_file(
        &mut b,
        "gentoo/metadata/timestamp.x",
        b"1787270400 Fri Aug 21 00:00:00 UTC 2026\n",
    );
    b
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_787_270_400);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_787_270_400);
    h.set_size(0);
    b.append_data(&mut h, name, &[][..]).unwrap();
}

/// `n` ordinary package files, enough to fill every channel of the pipeline.
fn add_many(b: &mut tar::Builder<Vec<u8>>, n: usize) {
    for i in 0..n {
        let body = format!("# ebuild {i}\nEAPI=8\nDESCRIPTION=\"package {i}\"\n").repeat(8);
        add_file(
            b,
            &format!("gentoo/cat-{}/pkg-{i}/pkg-{i}-1.ebuild", i % 50),
            body.as_bytes(),
        );
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn an_early_bad_entry_in_a_big_tarball_ends_the_import_and_frees_the_lock() {
    let env = Env::new();
    let tree = PortageTree::small(41);
    let good = env.snapshot(&tree, Compression::Xz, "good");
    let dir = env.dir("crafted");

    let mut b = snapshot_builder();
    add_file(&mut b, "gentoo/app-misc/dup/dup-1.ebuild", b"one");
    add_file(&mut b, "gentoo/app-misc/dup/dup-1.ebuild", b"two");
    add_many(&mut b, 6000);
    let dup = write(&dir, "dup.tar", &b.into_inner().unwrap());

    let mut b = snapshot_builder();
    add_file(&mut b, "gentoo/app-misc/clash", b"a file");
    add_dir(&mut b, "gentoo/app-misc/clash/");
    add_file(&mut b, "gentoo/app-misc/clash/inside", b"then a directory");
    add_many(&mut b, 6000);
    let clash = write(&dir, "clash.tar", &b.into_inner().unwrap());

    // Into an empty store, then into one with a snapshot.
    for round in 0..2 {
        let line = env.refused_within(
            &dup,
            &[],
            "entry \"gentoo/app-misc/dup/dup-1.ebuild\": duplicate path",
            QUICK,
        );
        assert!(line.contains("dup.tar"), "{line}");
        env.refused_within(
            &clash,
            &[],
            "entry \"gentoo/app-misc/clash/inside\": a parent directory is a file",
            QUICK,
        );
        // The lock is free: the next import neither waits nor fails.
        if round == 0 {
            let out = env.imports(&good, &[]);
            assert!(out.starts_with("imported "), "{out}");
        }
    }
    // And a later snapshot still imports after the refusals.
    let next = env.snapshot(&tree.next_day(), Compression::Gzip, "next");
    env.imports(&next, &[]);
    env.fsck();
    env.assert_no_scratch();
}

#[test]
fn endless_input_ends_with_an_error() {
    let env = Env::new();
    let tree = PortageTree::small(42);
    let good = env.snapshot(&tree, Compression::Xz, "good");
    let line = env.refused_within(
        Path::new("/dev/zero"),
        &["--no-verify"],
        "padding after the end of the archive",
        QUICK,
    );
    assert!(line.contains("/dev/zero"), "{line}");

    // A FIFO: a good tarball, then zeros for as long as anyone reads. Plain,
    // the zeros are tar padding; after xz, they are xz stream padding.
    let plain = env.snapshot(&tree, Compression::None, "plain");
    for (file, expected) in [
        (&plain, "padding after the end of the archive"),
        (&good, "without any output from the decompressor"),
    ] {
        let fifo = env.dir("fifo").join("endless.tar");
        let _ = fs::remove_file(&fifo);
        mkfifo(&fifo);
        let head = fs::read(file).unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                if w.write_all(&head).is_err() {
                    return;
                }
                let zeros = vec![0u8; 1 << 16];
                // Until the reader hangs up (EPIPE).
                while w.write_all(&zeros).is_ok() {}
            })
        };
        env.refused(&fifo, &["--no-verify"], expected);
        writer.join().unwrap();
    }
    // A FIFO that is a whole snapshot is fine: `import` reads it once.
    let fifo = env.dir("fifo-good").join("gentoo.tar.xz");
    mkfifo(&fifo);
    let bytes = fs::read(&good).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = w.write_all(&bytes);
        })
    };
    env.imports(&fifo, &["--no-verify"]);
    writer.join().unwrap();
    env.fsck();
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path; no memory is shared.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// The bytes of `tar` without its end-of-archive blocks.
fn without_end_blocks(tar: &[u8]) -> Vec<u8> {
    let mut a = tar::Archive::new(tar);
    let mut end = 0;
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        end = e.raw_file_position() + e.size().div_ceil(512) * 512;
    }
    tar[..end as usize].to_vec()
}

#[test]
fn a_tar_without_end_of_archive_blocks_is_refused() {
    let env = Env::new();
    let tree = PortageTree::small(43);
    let plain = env.snapshot(&tree, Compression::None, "plain");
    let bytes = fs::read(&plain).unwrap();
    let dir = env.dir("cut");
    let cut = write(&dir, "cut.tar", &without_end_blocks(&bytes));
    env.refused(&cut, &["--no-verify"], "no end-of-archive blocks");
    // Only one of the two blocks.
    let mut one = without_end_blocks(&bytes);
    one.extend_from_slice(&[0; 512]);
    let one = write(&dir, "one.tar", &one);
    env.refused(&one, &["--no-verify"], "only one end-of-archive block");
    // The last entry a directory whose data the reader skips.
    let mut b = tar::Builder::new(without_end_blocks(&bytes));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(1000);
    let top = tree.snapshot_stem();
    b.append_data(&mut h, format!("{top}/zz-dir/"), &[b'x'; 1000][..])
        .unwrap();
    let dir_last = write(
        &dir,
        "dir-last.tar",
        &without_end_blocks(&b.into_inner().unwrap()),
    );
    env.refused(&dir_last, &["--no-verify"], "no end-of-archive blocks");
    // Something after the end.
    let mut after = bytes.clone();
    after.extend_from_slice(b"trailing garbage");
    let after = write(&dir, "after.tar", &after);
    env.refused(
        &after,
        &["--no-verify"],
        "data after the end of the archive",
    );
    // The whole one imports.
    env.imports(&plain, &["--no-verify"]);
}

#[test]
fn stage_add_refuses_a_tar_without_end_of_archive_blocks() {
    if !util::require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // A stage-like tar whose last entry is a directory with skipped data.
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "etc/");
    add_file(&mut b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_787_270_400);
    h.set_size(1000);
    b.append_data(&mut h, "var/", &[b'x'; 1000][..]).unwrap();
    let whole = b.into_inner().unwrap();
    let cut = write(tmp.path(), "stage-cut.tar", &without_end_blocks(&whole));
    let (out, _) = util::run_within(
        util::portroot(&store).args(["stage", "add"]).arg(&cut),
        BOUND,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("no end-of-archive blocks"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let stages: Vec<_> = fs::read_dir(store.join("stages"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(stages.is_empty(), "{stages:?}");
    let whole = write(tmp.path(), "stage-whole.tar", &whole);
    let (out, _) = util::run_within(
        util::portroot(&store).args(["stage", "add"]).arg(&whole),
        BOUND,
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_newline_in_a_name_gives_one_line() {
    let env = Env::new();
    let dir = env.dir("nl");
    let mut b = snapshot_builder();
    add_file(&mut b, "gentoo/a\nb/c", b"one");
    add_file(&mut b, "gentoo/a\nb/c", b"two");
    let bytes = b.into_inner().unwrap();
    let line = env.refused(
        &write(&dir, "dup.tar", &bytes),
        &["--no-verify"],
        r#"entry "gentoo/a\nb/c": duplicate path"#,
    );
    assert!(line.contains("dup.tar"), "{line}");
    // The tarball's own name, in the error and in the warning.
    let line = env.refused(
        &write(&dir, "evil\nname.tar", &bytes),
        &["--no-verify"],
        r#"evil\nname.tar"#,
    );
    assert!(line.contains("duplicate path"), "{line}");
    let (out, _) = util::run_within(
        &mut env.import(&dir.join("evil\nname.tar"), &["--no-verify"]),
        BOUND,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 2, "warning and error:\n{err}");
}

/// A tmpfs mounted at a path for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap();
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_fails_the_import_cleanly() {
    if !util::require_root() {
        return;
    }
    let env = Env::new();
    let _mount = Tmpfs::mount(&env.store, "2m");
    let tree = PortageTree::small(44);
    let good = env.snapshot(&tree, Compression::Xz, "good");
    env.imports(&good, &[]);

    // Three MiB of content nothing compresses, early in the tarball.
    let mut b = tar::Builder::new(Vec::new());
    add_file(
        &mut b,
        "gentoo/metadata/timestamp.x",
        b"1787443200 Sun Aug 23 00:00:00 UTC 2026\n",
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..48 {
        let data: Vec<u8> = (0..64 << 10)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        add_file(
            &mut b,
            &format!("gentoo/dev-util/big/files/blob-{i}"),
            &data,
        );
    }
    // And many more entries after it, to fill every channel behind the packer.
    add_many(&mut b, 6000);
    let big = write(&env.dir("big"), "big.tar", &b.into_inner().unwrap());
    env.refused_within(&big, &["--no-verify"], "No space left on device", QUICK);

    // The space is back and the lock free: the next snapshot imports.
    let next = env.snapshot(&tree.next_day(), Compression::Xz, "next");
    env.imports(&next, &[]);
    env.fsck();
    env.assert_no_scratch();
    drop(_mount);
    util::assert_no_mounts_under(env.tmp.path());
}

/// Serve `first` to the first reader of the FIFO at `fifo`, then `second` to
/// any later reader, until `stop` is set. Returns how many readers got `second`.
fn two_faced_fifo(
    fifo: &Path,
    first: Vec<u8>,
    second: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::Ordering;
    mkfifo(fifo);
    let fifo = fifo.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + BOUND;
        // Blocks until the first reader opens it.
        let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let _ = w.write_all(&first);
        drop(w);
        // A writer opening while the first reader still reads would join its
        // stream: wait until that reader has closed the FIFO.
        while held_open(&fifo) && !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut served = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            // Non-blocking: fails with ENXIO while nobody reads.
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            {
                Ok(mut w) => {
                    served += 1;
                    let mut rest = &second[..];
                    while !rest.is_empty() && !stop.load(Ordering::SeqCst) {
                        match w.write(rest) {
                            Ok(n) => rest = &rest[n..],
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            Err(_) => break,
                        }
                    }
                    drop(w);
                    while held_open(&fifo)
                        && !stop.load(Ordering::SeqCst)
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

/// Whether any process has `path` open.
fn held_open(path: &Path) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l == path))
        {
            return true;
        }
    }
    false
}

#[test]
fn what_is_signed_is_what_is_imported() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = Env::new();
    let gpg = util::Gpg::new();
    let keyring = env.dir("keys").join("release.gpg");
    gpg.keyring(&keyring);
    let key = keyring.to_str().unwrap();
    let tree = PortageTree::small(45);
    let signed = env.snapshot(&tree, Compression::Xz, "signed");
    gpg.sign(&signed);
    // Unsigned, and a day newer: imported, it would become the new main.
    let other = env.snapshot(&tree.next_day(), Compression::Xz, "other");

    // A FIFO serving the signed bytes to the first open and the other bytes
    // to the next: the import reads it once, so it imports the signed ones.
    let dir = env.dir("fifo");
    let fifo = dir.join(signed.file_name().unwrap());
    fs::copy(
        format!("{}.gpgsig", signed.display()),
        format!("{}.gpgsig", fifo.display()),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = two_faced_fifo(
        &fifo,
        fs::read(&signed).unwrap(),
        fs::read(&other).unwrap(),
        Arc::clone(&stop),
    );
    let (out, _) = util::run_within(&mut env.import(&fifo, &["--keyring", key]), BOUND);
    stop.store(true, Ordering::SeqCst);
    let served_other = server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("imported "), "{stdout}");
    assert_eq!(served_other, 0, "the import opened the file twice");
    let git = |args: &[&str]| util::ok(Command::new("git").arg("-C").arg(env.repo()).args(args));
    assert_eq!(git(&["tag"]).lines().count(), 1);
    let imported = git(&["rev-parse", "main^{tree}"]);
    // The signed file itself, imported elsewhere, gives the same tree.
    let check = Env::new();
    check.imports(&signed, &["--keyring", key]);
    let expected = util::ok(
        Command::new("git")
            .arg("-C")
            .arg(check.repo())
            .args(["rev-parse", "main^{tree}"]),
    );
    assert_eq!(
        imported, expected,
        "the imported tree is not the signed one"
    );
    env.fsck();
    env.assert_no_scratch();

    // A bad signature over a FIFO: nothing referenced, no pack, no scratch.
    let bad = env.dir("bad").join(other.file_name().unwrap());
    fs::copy(
        format!("{}.gpgsig", signed.display()),
        format!("{}.gpgsig", bad.display()),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = two_faced_fifo(
        &bad,
        fs::read(&other).unwrap(),
        fs::read(&other).unwrap(),
        Arc::clone(&stop),
    );
    env.refused(&bad, &["--keyring", key], "BAD signature");
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        server.join().unwrap(),
        0,
        "the import opened the file twice"
    );
}
