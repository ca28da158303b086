//! `portroot snapshot sync|push|fetch` through the real binary: a real HTTP
//! mirror on 127.0.0.1 (and file:// and plain-path mirrors) holding snapshots
//! made by the portage fixture with dates relative to today, real gpg keys,
//! real bare git remotes on disk and a real FUSE mount of a fetched tag.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use portroot::fixture::portage::{pack_snapshot, pack_snapshot_with_top, PortageTree};
use portroot::snapshot::sync::yesterday_utc;
use portroot::snapshot::tag::SnapshotDate;
use portroot_runner::archive::Compression;

use crate::util;

const DAY: i64 = 86_400;

/// `days` before `d`.
fn minus(d: SnapshotDate, days: i64) -> SnapshotDate {
    SnapshotDate::from_timestamp(d.to_timestamp() - days * DAY)
}

fn compact(d: SnapshotDate) -> String {
    format!("{:04}{:02}{:02}", d.year, d.month, d.day)
}

/// One test's world: a scratch directory, a store, a mirror directory.
struct Env {
    tmp: tempfile::TempDir,
}

/// The snapshots a mirror fixture holds.
struct Published {
    /// File date of the newest snapshot (yesterday): `gentoo-D.tar.xz`.
    newest: SnapshotDate,
    /// File date of an older one (3 days before): `portage-D.tar.bz2`.
    older: SnapshotDate,
}

/// Every repository a sync, push or fetch test leaves in the store must pass
/// `git fsck --strict`, as every import must: checked when the test's store
/// goes, unless the test already failed.
impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Ok(repos) = std::fs::read_dir(self.store().join("repos")) else {
            return;
        };
        for repo in repos.flatten().map(|e| e.path()) {
            if repo.extension().is_none_or(|x| x != "git") {
                continue;
            }
            let out = util::run(Command::new("git").arg("--git-dir").arg(&repo).args([
                "fsck",
                "--strict",
                "--no-progress",
            ]));
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "git fsck --strict of {}: {}",
                repo.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn cmd(&self) -> Command {
        util::portroot(&self.store())
    }

    /// A tree whose `timestamp.x` falls on file date `file_date` at 00:45 UTC.
    fn tree_for(seed: u64, file_date: SnapshotDate) -> PortageTree {
        PortageTree {
            base_timestamp: file_date.to_timestamp() - DAY + 2700,
            ..PortageTree::small(seed)
        }
    }

    /// A mirror at `rel` with the newest snapshot yesterday (as
    /// `gentoo-D.tar.xz`) and an older one three days before (as
    /// `portage-D.tar.bz2`, top directory `portage/`), each with its `.md5sum`.
    fn mirror(&self, rel: &str) -> Published {
        let newest = yesterday_utc();
        let older = minus(newest, 3);
        let snaps = self.path(rel).join("snapshots");
        let old_tree = Env::tree_for(5, older);
        let old_dir = self.path(&format!("{rel}-tree-old"));
        old_tree.write_tree(&old_dir).unwrap();
        pack_snapshot_with_top(
            &old_dir,
            &format!("portage-{}", compact(older)),
            "portage",
            Compression::Bzip2,
            &snaps,
        )
        .unwrap();
        // The newest is the older tree three days on, so it shares most objects.
        let mut new_tree = old_tree.clone();
        new_tree.day = 3;
        let new_dir = self.path(&format!("{rel}-tree-new"));
        new_tree.write_tree(&new_dir).unwrap();
        assert_eq!(
            new_tree.snapshot_stem(),
            format!("gentoo-{}", compact(newest))
        );
        pack_snapshot(&new_dir, &new_tree.snapshot_stem(), Compression::Xz, &snaps).unwrap();
        Published { newest, older }
    }

    fn tags(&self) -> Vec<String> {
        let repo = self.store().join("repos/gentoo.git");
        if !repo.exists() {
            return Vec::new();
        }
        git(&repo, &["tag", "-l"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The store's refs and the files of its tmp/: what must not change on refusal.
    fn state(&self) -> (Vec<String>, String, Vec<String>) {
        let repo = self.store().join("repos/gentoo.git");
        let refs = if repo.exists() {
            git(&repo, &["for-each-ref"])
        } else {
            String::new()
        };
        let tmp: Vec<String> = fs::read_dir(self.store().join("tmp"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.ends_with(".lock"))
                    .collect()
            })
            .unwrap_or_default();
        (self.tags(), refs, tmp)
    }

    /// Nothing left in the store's tmp/ but lock files.
    fn assert_tmp_clean(&self) {
        let (_, _, tmp) = self.state();
        assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    }
}

/// Tag date (YYYY-MM-DD) of a mirror file date.
fn tag_of(file_date: SnapshotDate) -> String {
    minus(file_date, 1).to_string()
}

fn git(dir: &Path, args: &[&str]) -> String {
    util::ok(Command::new("git").arg("--git-dir").arg(dir).args(args))
}

/// How the loopback mirror answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    /// The files as they are.
    Files,
    /// Tarballs with one byte flipped (their `.md5sum` untouched).
    Corrupt,
    /// Half of each tarball, then nothing until the server stops.
    Stall,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving a directory, one thread,
/// one request per connection. Stops and joins on drop.
pub(crate) struct HttpMirror {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpMirror {
    pub(crate) fn start(root: &Path, serve: Serve) -> HttpMirror {
        HttpMirror::start_with(root, serve, None)
    }

    /// An https mirror with this TLS configuration ([`HttpMirror::url`]
    /// still says http: use [`HttpMirror::https_url`]).
    fn start_with(root: &Path, serve: Serve, tls: Option<Arc<rustls::ServerConfig>>) -> HttpMirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = match &tls {
                            None => answer(s, &root, serve, &flag),
                            Some(cfg) => rustls::ServerConnection::new(cfg.clone())
                                .map_err(std::io::Error::other)
                                .and_then(|conn| {
                                    let mut tls = rustls::StreamOwned::new(conn, s);
                                    answer(&mut tls, &root, serve, &flag)?;
                                    tls.conn.send_close_notify();
                                    tls.flush()
                                }),
                        };
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        HttpMirror {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpMirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(
    mut s: impl std::io::Read + Write,
    root: &Path,
    serve: Serve,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut request = String::new();
    {
        // A GET has no body: nothing is buffered past the blank line.
        let mut reader = BufReader::new(&mut s);
        reader.read_line(&mut request)?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let file = root.join(path.trim_start_matches('/'));
    let body = if path.contains("..") {
        None
    } else {
        fs::read(&file).ok()
    };
    match body {
        Some(mut body) => {
            let tarball = path.contains(".tar.") && !path.ends_with(".md5sum");
            if serve == Serve::Corrupt && tarball {
                let mid = body.len() / 2;
                body[mid] ^= 0xff;
            }
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if serve == Serve::Stall && tarball {
                s.write_all(&body[..body.len() / 2])?;
                s.flush()?;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Ok(());
            }
            s.write_all(&body)?;
        }
        None => {
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    s.flush()
}

/// A port nothing listens on: bound, read, closed.
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn sync_takes_the_newest_then_says_no_newer_and_revert_takes_an_older() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let http = HttpMirror::start(&env.path("mirror"), Serve::Files);

    let out = util::ok(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", &http.url()]),
    );
    assert!(
        out.starts_with(&format!("imported {}", tag_of(p.newest))),
        "{out}"
    );
    assert!(
        out.contains(&format!("gentoo-{}.tar.xz", compact(p.newest))),
        "{out}"
    );
    assert_eq!(env.tags(), [tag_of(p.newest)]);
    env.assert_tmp_clean();

    let before = env.state();
    let out = util::ok(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", &http.url()]),
    );
    assert!(out.starts_with("no newer snapshot"), "{out}");
    assert_eq!(env.state(), before);

    let keep = env.path("kept");
    let out = util::ok(env.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        &http.url(),
        "--revert",
        &compact(p.older),
        "--keep-download",
        keep.to_str().unwrap(),
    ]));
    assert!(
        out.starts_with(&format!("imported {}", tag_of(p.older))),
        "{out}"
    );
    assert!(out.contains("main unmoved"), "{out}");
    let mut tags = env.tags();
    tags.sort();
    assert_eq!(tags, [tag_of(p.older), tag_of(p.newest)]);
    let name = format!("portage-{}.tar.bz2", compact(p.older));
    assert!(keep.join(&name).is_file() && keep.join(format!("{name}.md5sum")).is_file());
    env.assert_tmp_clean();
    // main still names the newest snapshot.
    let repo = env.store().join("repos/gentoo.git");
    assert_eq!(
        git(&repo, &["rev-parse", "main"]),
        git(
            &repo,
            &["rev-parse", &format!("{}^{{commit}}", tag_of(p.newest))]
        )
    );
}

#[test]
fn dead_or_corrupt_first_mirror_fails_over_to_the_second() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let good = HttpMirror::start(&env.path("mirror"), Serve::Files);
    let corrupt = HttpMirror::start(&env.path("mirror"), Serve::Corrupt);

    let out = util::run(env.cmd().args([
        "snapshot",
        "sync",
        "--timeout",
        "5",
        "--mirror",
        &closed_port_url(),
        "--mirror",
        &good.url(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unreachable"),
        "one warning for the dead mirror: {stderr}"
    );
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    assert_eq!(env.tags(), [tag_of(p.newest)]);

    // A fresh store: the corrupt copy is refused, the plain-path mirror serves.
    let env2 = Env::new();
    let out = util::run(env2.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        &corrupt.url(),
        "--mirror",
        env.path("mirror").to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("md5 mismatch"), "{stderr}");
    assert_eq!(env2.tags(), [tag_of(p.newest)]);
    env2.assert_tmp_clean();

    // Corrupt everywhere: refused, nothing changed.
    let env3 = Env::new();
    let err = util::fails(
        env3.cmd()
            .args(["snapshot", "sync", "--mirror", &corrupt.url()]),
        1,
    );
    assert!(err.contains("no mirror served a verified"), "{err}");
    assert!(env3.tags().is_empty());
    env3.assert_tmp_clean();
    assert!(!env3.store().join("repos/gentoo.git").exists());
}

#[test]
fn stalled_or_empty_first_mirror_fails_over_to_the_second() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let good = HttpMirror::start(&env.path("mirror"), Serve::Files);
    // Listening but never answering: the kernel accepts the connection, the
    // request is never read, so only the read timeout can end the wait.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    let out = util::run(env.cmd().args([
        "snapshot",
        "sync",
        "--timeout",
        "1",
        "--mirror",
        &stalled_url,
        "--mirror",
        &good.url(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unreachable") && stderr.contains("timeout"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    assert_eq!(env.tags(), [tag_of(p.newest)]);
    drop(stalled);

    // A mirror that answers 404 to everything.
    let empty = env.path("empty");
    fs::create_dir_all(empty.join("snapshots")).unwrap();
    let empty_http = HttpMirror::start(&empty, Serve::Files);
    let env2 = Env::new();
    let out = util::run(env2.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        &empty_http.url(),
        "--mirror",
        &good.url(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("has no snapshot dated {}", compact(p.newest))),
        "{stderr}"
    );
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    assert_eq!(env2.tags(), [tag_of(p.newest)]);
}

#[test]
fn names_are_tried_in_emerge_webrsync_order() {
    let env = Env::new();
    let date = yesterday_utc();
    let d = compact(date);
    let tree = Env::tree_for(3, date);
    tree.write_tree(&env.path("t")).unwrap();
    let snaps = env.path("mirror/snapshots");
    for (stem, c) in [
        (format!("gentoo-{d}"), Compression::Bzip2),
        (format!("portage-{d}"), Compression::Bzip2),
        (format!("portage-{d}"), Compression::Xz),
    ] {
        pack_snapshot(&env.path("t"), &stem, c, &snaps).unwrap();
    }
    let m = env.path("mirror");
    let sync = |e: &Env| {
        util::ok(
            e.cmd()
                .args(["snapshot", "sync", "--mirror", m.to_str().unwrap()]),
        )
    };

    // .tar.xz before .tar.bz2, whatever the prefix.
    let out = sync(&env);
    assert!(out.contains(&format!(": portage-{d}.tar.xz from")), "{out}");
    assert_eq!(env.tags(), [tag_of(date)]);

    // Then gentoo- before portage-.
    for f in [
        format!("portage-{d}.tar.xz"),
        format!("portage-{d}.tar.xz.md5sum"),
    ] {
        fs::remove_file(snaps.join(f)).unwrap();
    }
    let e2 = Env::new();
    let out = sync(&e2);
    assert!(out.contains(&format!(": gentoo-{d}.tar.bz2 from")), "{out}");
    assert_eq!(e2.tags(), [tag_of(date)]);
    // The same tree whichever file carried it.
    assert_eq!(
        git(
            &e2.store().join("repos/gentoo.git"),
            &["rev-parse", "main^{tree}"]
        ),
        git(
            &env.store().join("repos/gentoo.git"),
            &["rev-parse", "main^{tree}"]
        )
    );
}

#[test]
fn no_snapshot_within_max_age_is_refused_in_one_line() {
    let env = Env::new();
    let snaps = env.path("mirror/snapshots");
    let old = minus(yesterday_utc(), 10);
    let tree = Env::tree_for(9, old);
    tree.write_tree(&env.path("t")).unwrap();
    pack_snapshot(
        &env.path("t"),
        &tree.snapshot_stem(),
        Compression::Xz,
        &snaps,
    )
    .unwrap();
    let url = format!("file://{}", env.path("mirror").display());
    let err = util::fails(
        env.cmd()
            .args(["snapshot", "sync", "--max-age-days", "5", "--mirror", &url]),
        1,
    );
    assert!(err.contains("no snapshot dated"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(env.tags().is_empty());
    // Far enough back, the same mirror serves it.
    let out =
        util::ok(
            env.cmd()
                .args(["snapshot", "sync", "--max-age-days", "11", "--mirror", &url]),
        );
    assert!(
        out.starts_with(&format!("imported {}", tag_of(old))),
        "{out}"
    );

    let err = util::fails(
        env.cmd().args(["snapshot", "sync", "--mirror", "ftp://x"]),
        1,
    );
    assert!(err.contains("only http, https, file://"), "{err}");
}

#[test]
fn signatures_are_required_with_a_keyring_over_file_urls() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let url = format!("file://{}", env.path("mirror").display());
    let tarball = env
        .path("mirror/snapshots")
        .join(format!("gentoo-{}.tar.xz", compact(p.newest)));
    let sig = PathBuf::from(format!("{}.gpgsig", tarball.display()));
    let gpg = util::Gpg::new();
    let keyring = env.path("gentoo-release.gpg");
    gpg.keyring(&keyring);
    let sync = |env: &Env| {
        let mut c = env.cmd();
        c.args(["snapshot", "sync", "--mirror", &url, "--keyring"])
            .arg(&keyring);
        c
    };

    let refused = |why: &str| {
        let before = env.state();
        let err = util::fails(&mut sync(&env), 1).to_lowercase();
        assert!(err.contains(why), "expected {why:?}: {err}");
        assert_eq!(env.state(), before, "nothing changed");
        assert!(!env.store().join("repos/gentoo.git").exists());
    };
    refused("no signature");
    // A good signature of something else.
    gpg.sign_to(
        &PathBuf::from(format!("{}.md5sum", tarball.display())),
        &sig,
    );
    refused("bad signature");
    // Signed by a key the keyring does not hold.
    let stranger = util::Gpg::new();
    stranger.sign_to(&tarball, &sig);
    refused("no public key");

    gpg.sign_to(&tarball, &sig);
    let out = util::ok(&mut sync(&env));
    assert!(
        out.starts_with(&format!("imported {}", tag_of(p.newest))),
        "{out}"
    );
    env.assert_tmp_clean();

    // A mirror whose copy is signed by a stranger is passed over for the next.
    let bad = env.path("bad-mirror/snapshots");
    fs::create_dir_all(&bad).unwrap();
    for e in fs::read_dir(env.path("mirror/snapshots")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    stranger.sign_to(&tarball, &bad.join(sig.file_name().unwrap()));
    let env2 = Env::new();
    let out = util::run(
        env2.cmd()
            .args(["snapshot", "sync", "--mirror"])
            .arg(env.path("bad-mirror"))
            .args(["--mirror", &url, "--keyring"])
            .arg(&keyring),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(stderr.matches("WARN").count(), 1, "{stderr}");
    assert!(stderr.to_lowercase().contains("no public key"), "{stderr}");
    assert!(stderr.contains("bad-mirror"), "{stderr}");
    assert_eq!(env2.tags(), [tag_of(p.newest)]);
    env2.assert_tmp_clean();
}

#[test]
fn a_configured_keyring_is_required_until_no_verify_into_another_repo() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let url = format!("file://{}", env.path("mirror").display());
    let gpg = util::Gpg::new();
    let keyring = env.path("gentoo-release.gpg");
    gpg.keyring(&keyring);
    fs::create_dir_all(env.store()).unwrap();
    fs::write(
        env.store().join("config.toml"),
        format!("keyring = \"{}\"\n", keyring.display()),
    )
    .unwrap();

    // The mirror publishes no signatures: the configured keyring refuses it.
    let before = env.state();
    let err = util::fails(env.cmd().args(["snapshot", "sync", "--mirror", &url]), 1);
    assert!(err.to_lowercase().contains("no signature"), "{err}");
    assert_eq!(env.state(), before, "nothing changed");

    // --no-verify skips both checks, says so once, and --repo picks the repo.
    let out = util::run(env.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        &url,
        "--no-verify",
        "--repo",
        "other",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one warning: {stderr}");
    assert!(stderr.contains("--no-verify"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("imported {}", tag_of(p.newest))),
        "{stdout}"
    );
    let other = env.store().join("repos/other.git");
    assert_eq!(git(&other, &["tag", "-l"]).trim(), tag_of(p.newest));
    assert!(!env.store().join("repos/gentoo.git").exists());
    env.assert_tmp_clean();

    // A wrong md5 sum is refused (before the missing signature), and accepted
    // only when nothing is checked.
    let older = env
        .path("mirror/snapshots")
        .join(format!("portage-{}.tar.bz2.md5sum", compact(p.older)));
    fs::write(
        &older,
        format!("{}  portage-{}.tar.bz2\n", "0".repeat(32), compact(p.older)),
    )
    .unwrap();
    let err = util::fails(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", &url, "--revert"])
            .arg(compact(p.older))
            .args(["--repo", "other"]),
        1,
    );
    assert!(err.contains("md5 mismatch"), "{err}");
    let out = util::ok(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", &url, "--revert"])
            .arg(compact(p.older))
            .args(["--repo", "other", "--no-verify"]),
    );
    assert!(out.contains(&tag_of(p.older)), "{out}");
    let mut tags: Vec<String> = git(&other, &["tag", "-l"])
        .lines()
        .map(str::to_owned)
        .collect();
    tags.sort();
    assert_eq!(tags, [tag_of(p.older), tag_of(p.newest)]);
    env.assert_tmp_clean();
}

/// Every file of `tag` in the bare repository `repo`: path -> (mode, content).
fn git_tree(repo: &Path, tag: &str) -> BTreeMap<String, (u32, Vec<u8>)> {
    let repo = git2::Repository::open_bare(repo).unwrap();
    let tree = repo.revparse_single(tag).unwrap().peel_to_tree().unwrap();
    let mut out = BTreeMap::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
        if e.kind() == Some(git2::ObjectType::Blob) {
            let blob = repo.find_blob(e.id()).unwrap();
            let mode = match e.filemode() {
                0o120000 => 0o120000,
                m if m & 0o100 != 0 => 0o100755,
                _ => 0o100644,
            };
            out.insert(
                format!("{dir}{}", e.name().unwrap()),
                (mode, blob.content().to_vec()),
            );
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    out
}

/// Every file below `dir`: path -> (mode, content or symlink target).
fn walk(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(
                    rel,
                    (0o120000, target.into_os_string().into_encoded_bytes()),
                );
            } else if meta.is_dir() {
                go(root, &path, out);
            } else {
                let mode = if meta.permissions().mode() & 0o100 != 0 {
                    0o100755
                } else {
                    0o100644
                };
                out.insert(rel, (mode, fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

#[test]
fn push_then_fetch_into_a_fresh_store_serves_the_same_tree() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let mirror = env.path("mirror");
    let m = mirror.to_str().unwrap();
    util::ok(env.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        m,
        "--revert",
        &compact(p.older),
    ]));
    util::ok(env.cmd().args(["snapshot", "sync", "--mirror", m]));
    let ours = env.store().join("repos/gentoo.git");

    let remote = env.path("server/gentoo.git");
    fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q"]);
    let r = remote.to_str().unwrap();
    let out = util::ok(env.cmd().args(["snapshot", "push", r]));
    assert!(out.starts_with("pushed main and 2 tag(s)"), "{out}");
    assert_eq!(
        git(&remote, &["for-each-ref"]),
        git(&ours, &["for-each-ref"]),
        "the remote holds exactly our main and tags"
    );
    let out = util::ok(env.cmd().args(["snapshot", "push", r]));
    assert_eq!(out.trim(), "already up to date");

    let other = Env::new();
    let out = util::ok(
        other
            .cmd()
            .args(["snapshot", "fetch", &format!("file://{r}")]),
    );
    assert!(out.starts_with("fetched main and 2 tag(s)"), "{out}");
    other.assert_tmp_clean();
    let theirs = other.store().join("repos/gentoo.git");
    assert_eq!(
        git(&theirs, &["for-each-ref"]),
        git(&ours, &["for-each-ref"])
    );
    for tag in [tag_of(p.older), tag_of(p.newest)] {
        assert_eq!(
            git(&theirs, &["ls-tree", "-r", &tag]),
            git(&ours, &["ls-tree", "-r", &tag])
        );
    }
    git(&theirs, &["fsck", "--strict", "--no-dangling"]);
    let listed = util::ok(other.cmd().args(["snapshot", "list"]));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let out = util::ok(other.cmd().args(["snapshot", "fetch", r]));
    assert_eq!(out.trim(), "already up to date");

    if !util::require_root() {
        return;
    }
    let tag = tag_of(p.newest);
    let at = tempfile::tempdir().unwrap();
    util::ok(other.cmd().args(["mount", "--tag", &tag]).arg(at.path()));
    let served = walk(at.path());
    util::ok(other.cmd().arg("umount").arg(at.path()));
    util::assert_no_mounts_under(at.path());
    let expected = git_tree(&ours, &tag);
    assert!(expected.len() > 100);
    assert_eq!(served.len(), expected.len());
    assert!(
        served == expected,
        "the mounted tree differs from the pushed tag"
    );
}

/// Every file and directory of a store but its lock files: relative path ->
/// content (None for a directory).
fn store_files(store: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![store.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let rel = e.path().strip_prefix(store).unwrap().to_owned();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
                out.insert(rel, None);
            } else if !e.file_name().to_string_lossy().ends_with(".lock") {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

/// Fail naming the paths added, removed or changed between two [`store_files`].
fn assert_same_files(
    before: &BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &BTreeMap<PathBuf, Option<Vec<u8>>>,
) {
    let mut diff = Vec::new();
    for (p, c) in after {
        match before.get(p) {
            None => diff.push(format!("+ {}", p.display())),
            Some(b) if b != c => diff.push(format!("~ {}", p.display())),
            _ => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        diff.push(format!("- {}", p.display()));
    }
    assert!(diff.is_empty(), "the store changed:\n{}", diff.join("\n"));
}

/// Bytes of the packs in a bare repository.
fn pack_bytes(repo: &Path) -> u64 {
    fs::read_dir(repo.join("objects/pack"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_second_fetch_brings_only_what_is_missing() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let m = env.path("mirror");
    let m = m.to_str().unwrap();
    let remote = env.path("server.git");
    fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q"]);
    let r = remote.to_str().unwrap();
    util::ok(env.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        m,
        "--revert",
        &compact(p.older),
    ]));
    util::ok(env.cmd().args(["snapshot", "push", r]));

    let other = Env::new();
    let theirs = other.store().join("repos/gentoo.git");
    let out = util::ok(other.cmd().args(["snapshot", "fetch", r]));
    assert!(out.starts_with("fetched main and 1 tag(s)"), "{out}");
    let first = pack_bytes(&theirs);

    // Three days on, most of the tree is unchanged: the second fetch must
    // not carry the objects the store already has.
    util::ok(env.cmd().args(["snapshot", "sync", "--mirror", m]));
    util::ok(env.cmd().args(["snapshot", "push", r]));
    let out = util::ok(other.cmd().args(["snapshot", "fetch", r]));
    assert!(out.starts_with("fetched main and 1 tag(s)"), "{out}");
    let second = pack_bytes(&theirs) - first;
    assert!(
        second * 2 < first,
        "second fetch {second} bytes, first {first} bytes"
    );
    git(&theirs, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(
        git(&theirs, &["for-each-ref"]),
        git(&env.store().join("repos/gentoo.git"), &["for-each-ref"])
    );
    other.assert_tmp_clean();
}

#[test]
fn a_tag_naming_different_objects_is_refused_without_force() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let m = env.path("mirror");
    util::ok(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", m.to_str().unwrap()]),
    );
    let remote = env.path("server.git");
    fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q"]);
    let r = remote.to_str().unwrap();
    util::ok(env.cmd().args(["snapshot", "push", r]));
    let other = Env::new();
    util::ok(other.cmd().args(["snapshot", "fetch", r]));

    // Same main, but the tag is another tag object (another message).
    let tag = tag_of(p.newest);
    let repo = other.store().join("repos/gentoo.git");
    git(
        &repo,
        &[
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@x",
            "tag",
            "-f",
            "-a",
            "-m",
            "other",
            &tag,
            "main",
        ],
    );
    let remote_before = store_files(&remote);
    let files_before = store_files(&other.store());
    for verb in ["push", "fetch"] {
        let err = util::fails(other.cmd().args(["snapshot", verb, r]), 1);
        assert!(
            err.contains(&format!("tag {tag} names different objects")) && err.contains("--force"),
            "{verb}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_same_files(&files_before, &store_files(&other.store()));
        assert_same_files(&remote_before, &store_files(&remote));
    }
    let ours = git(&repo, &["rev-parse", &tag]);
    util::ok(other.cmd().args(["snapshot", "push", "--force", r]));
    assert_eq!(git(&remote, &["rev-parse", &tag]), ours);
    // And back: the first store takes the replaced tag only with --force.
    util::fails(env.cmd().args(["snapshot", "fetch", r]), 1);
    let out = util::ok(env.cmd().args(["snapshot", "fetch", "--force", r]));
    assert!(out.contains(&tag), "{out}");
    assert_eq!(
        git(&env.store().join("repos/gentoo.git"), &["rev-parse", &tag]),
        ours
    );
}

#[test]
fn diverged_main_is_refused_without_force() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let m = env.path("mirror");
    util::ok(
        env.cmd()
            .args(["snapshot", "sync", "--mirror", m.to_str().unwrap()]),
    );
    let remote = env.path("server.git");
    fs::create_dir_all(&remote).unwrap();
    git(&remote, &["init", "--bare", "-q"]);
    let r = remote.to_str().unwrap();
    util::ok(env.cmd().args(["snapshot", "push", r]));

    // Another store with a different history: its main is no descendant of ours.
    let other = Env::new();
    let tree = Env::tree_for(77, p.newest);
    tree.write_tree(&other.path("t")).unwrap();
    let file = pack_snapshot(
        &other.path("t"),
        &tree.snapshot_stem(),
        Compression::Xz,
        &other.path("out"),
    )
    .unwrap();
    util::ok(other.cmd().args(["snapshot", "import"]).arg(&file));
    let remote_before = git(&remote, &["for-each-ref"]);
    let err = util::fails(other.cmd().args(["snapshot", "push", r]), 1);
    assert!(err.contains("diverged") && err.contains("--force"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(git(&remote, &["for-each-ref"]), remote_before);

    // Fetching the remote's diverged main into the other store: refused too,
    // and not one file of the store changes (no objects, no staging refs).
    let other_refs = git(&other.store().join("repos/gentoo.git"), &["for-each-ref"]);
    let files_before = store_files(&other.store());
    let err = util::fails(other.cmd().args(["snapshot", "fetch", r]), 1);
    assert!(err.contains("diverged"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        git(&other.store().join("repos/gentoo.git"), &["for-each-ref"]),
        other_refs,
        "no staging refs left, nothing moved"
    );
    assert_same_files(&files_before, &store_files(&other.store()));

    util::ok(other.cmd().args(["snapshot", "push", "--force", r]));
    assert_eq!(git(&remote, &["for-each-ref"]), other_refs);
    // Now the first store is the one behind a rewritten remote.
    let ours = git(&env.store().join("repos/gentoo.git"), &["for-each-ref"]);
    util::fails(env.cmd().args(["snapshot", "fetch", r]), 1);
    assert_eq!(
        git(&env.store().join("repos/gentoo.git"), &["for-each-ref"]),
        ours
    );
    util::ok(env.cmd().args(["snapshot", "fetch", "--force", r]));
    assert_eq!(
        git(&env.store().join("repos/gentoo.git"), &["for-each-ref"]),
        other_refs
    );

    let err = util::fails(
        env.cmd().args(["snapshot", "push", "/nonexistent/x.git"]),
        1,
    );
    assert!(
        err.contains("no git repository at /nonexistent/x.git"),
        "{err}"
    );
}

#[test]
fn help_explains_sync_push_and_fetch_with_examples() {
    for sub in ["sync", "push", "fetch"] {
        let out = util::ok(Command::new(util::bin()).args(["snapshot", sub, "--help"]));
        assert!(out.contains("Example"), "{sub}: {out}");
    }
}

/// `git daemon` on loopback serving `base`, push enabled; killed on drop.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // `git daemon` forks git-daemon and would outlive a kill of the
        // wrapper: run git-daemon itself so that drop ends the real server.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        assert!(exec_path.status.success());
        let exec_path = String::from_utf8(exec_path.stdout).unwrap();
        let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let d = GitDaemon { child, port };
        // Ready once it accepts connections.
        for _ in 0..1000 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("git daemon did not start listening on {port}");
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_and_fetch_over_a_network_url_go_through_the_git_cli() {
    let env = Env::new();
    let p = env.mirror("mirror");
    util::ok(env.cmd().args([
        "snapshot",
        "sync",
        "--mirror",
        env.path("mirror").to_str().unwrap(),
    ]));
    let server = env.path("server");
    fs::create_dir_all(server.join("gentoo.git")).unwrap();
    git(&server.join("gentoo.git"), &["init", "--bare", "-q"]);
    let daemon = GitDaemon::start(&server);
    let url = daemon.url("gentoo.git");

    let out = util::ok(env.cmd().args(["snapshot", "push", &url]));
    assert!(out.starts_with("pushed main and 1 tag(s)"), "{out}");
    let ours = git(&env.store().join("repos/gentoo.git"), &["for-each-ref"]);
    assert_eq!(git(&server.join("gentoo.git"), &["for-each-ref"]), ours);

    let other = Env::new();
    let out = util::ok(other.cmd().args(["snapshot", "fetch", &url]));
    assert!(out.starts_with("fetched main and 1 tag(s)"), "{out}");
    let theirs = other.store().join("repos/gentoo.git");
    assert_eq!(git(&theirs, &["for-each-ref"]), ours);
    let tag = tag_of(p.newest);
    assert_eq!(
        git(&theirs, &["ls-tree", "-r", &tag]),
        git(
            &env.store().join("repos/gentoo.git"),
            &["ls-tree", "-r", &tag]
        )
    );

    let err = util::fails(
        other
            .cmd()
            .args(["snapshot", "fetch", &daemon.url("missing.git")]),
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("missing.git"), "{err}");
}

/// The files below the store's tmp/ (lock files aside), with their sizes.
fn tmp_files(store: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut dirs = vec![store.join("tmp")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(e.path());
            } else if !e.file_name().to_string_lossy().ends_with(".lock") {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out
}

#[test]
fn interrupted_sync_removes_its_download() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let stalling = HttpMirror::start(&env.path("mirror"), Serve::Stall);
    let mut child = env
        .cmd()
        .args(["snapshot", "sync", "--timeout", "600", "--mirror"])
        .arg(stalling.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until half the tarball sits in the download directory.
    let name = format!("gentoo-{}.tar.xz", compact(p.newest));
    let mut seen = false;
    for _ in 0..6000 {
        if tmp_files(&env.store())
            .iter()
            .any(|(f, len)| f.file_name().unwrap().to_string_lossy() == name && *len > 0)
        {
            seen = true;
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "sync ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    if !seen {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the download never started");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(tmp_files(&env.store()), [], "download left behind");
    env.assert_tmp_clean();
    assert!(env.tags().is_empty());
    drop(stalling);
}

#[test]
fn a_terminal_shows_a_progress_bar_with_bytes_and_rate() {
    use std::io::Read;
    use std::sync::Mutex;

    let env = Env::new();
    let p = env.mirror("mirror");
    let stalling = HttpMirror::start(&env.path("mirror"), Serve::Stall);
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut child = env
        .cmd()
        .args(["snapshot", "sync", "--timeout", "600", "--mirror"])
        .arg(stalling.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // The child holds the only slave now: reads end (EIO) once it exits.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        let mut master = fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let name = format!("gentoo-{}.tar.xz", compact(p.newest));
    let shown = |s: &str| s.contains(&format!("downloading {name}")) && s.contains("iB/s");
    let mut text = String::new();
    for _ in 0..6000 {
        text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        if shown(&text) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(shown(&text), "no progress bar on the terminal: {text:?}");
    // Bytes so far out of the total: the stall is at half the tarball.
    let total = fs::metadata(env.path("mirror/snapshots").join(&name))
        .unwrap()
        .len();
    assert!((4096..1 << 20).contains(&total), "{total}");
    let of_total = format!("/{:.2} KiB", total as f64 / 1024.0);
    assert!(text.contains(&of_total), "{of_total} expected: {text:?}");
    assert_eq!(status.code(), Some(130), "{text}");
    env.assert_tmp_clean();
    drop(stalling);
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed, made with the
/// openssl command line in `dir`: (CA PEM path, server TLS configuration).
fn test_ca(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=portroot test CA",
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    fs::write(
        dir.join("srv.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "srv.ext",
    ]);
    let chain = vec![CertificateDer::from_pem_file(dir.join("srv.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (dir.join("ca.pem"), Arc::new(cfg))
}

#[test]
fn https_mirrors_are_checked_against_the_ca_bundle() {
    let env = Env::new();
    let p = env.mirror("mirror");
    let (ca, tls) = test_ca(&env.path("ca"));
    let https = HttpMirror::start_with(&env.path("mirror"), Serve::Files, Some(tls));

    // The system's bundle does not know the test CA: refused, nothing changed.
    let before = env.state();
    let err = util::fails(
        env.cmd().env_remove("SSL_CERT_FILE").args([
            "snapshot",
            "sync",
            "--mirror",
            &https.https_url(),
        ]),
        1,
    );
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(env.state(), before);
    assert!(!env.store().join("repos/gentoo.git").exists());

    // Trusted through SSL_CERT_FILE, as wget and curl do.
    let out = util::ok(env.cmd().env("SSL_CERT_FILE", &ca).args([
        "snapshot",
        "sync",
        "--mirror",
        &https.https_url(),
    ]));
    assert!(
        out.starts_with(&format!("imported {}", tag_of(p.newest))),
        "{out}"
    );
    assert!(out.contains(&https.https_url()), "{out}");
    env.assert_tmp_clean();
}
