//! The git-tree FUSE filesystem, mounted for real: trees compared with
//! `git archive | tar -x`, the all-tags view, non-root readers, EROFS for every
//! write, parallel readers, huge directories, and the CLI's mount lifecycle
//! (umount, Ctrl-C of `--foreground`, SIGKILL of the daemon, bad input).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portroot_fs::{MountOptions, MountedFs, View};

use crate::util;

const TAG1: &str = "2026-08-20";
const TAG2: &str = "2026-08-21";
const TAG3: &str = "2026-08-22";
const TIME1: i64 = 1787270400;
const TIME2: i64 = 1787356800;
const TIME3: i64 = 1787443200;
const MANY: usize = 5000;

/// Run git in `dir` with a fixed identity and the given commit date.
fn git(dir: &Path, args: &[&str], time: i64) -> String {
    let date = format!("{time} +0000");
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::write(path, data).expect("write");
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A repository with two tags (annotated `TAG1`, lightweight `TAG2`) holding
/// nested dirs, exec files, symlinks (relative, absolute, dangling), empty
/// files, a 3 MiB file, a directory of `many` entries, a submodule entry and
/// odd names. The work tree is the repo; tests use its `.git`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// The usual fixture, with a small `many/` directory.
    fn new() -> Fixture {
        Fixture::with_many(64)
    }

    fn with_many(many: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"], 0);
        write(&d.join("a/b/c/deep.txt"), "deep\n");
        write(&d.join("a/readme"), "readme\n");
        write(&d.join("empty"), "");
        write(&d.join("bin/run.sh"), "#!/bin/sh\necho hi\n");
        chmod(&d.join("bin/run.sh"), 0o755);
        write(&d.join("name with spaces"), "spaces\n");
        write(&d.join("ünïcødé"), "utf8\n");
        let big: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        write(&d.join("big.bin"), &big);
        for i in 0..many {
            write(
                &d.join(format!("many/entry-{i:05}.ebuild")),
                format!("{i}\n"),
            );
        }
        std::os::unix::fs::symlink("a/b/c/deep.txt", d.join("rel-link")).expect("symlink");
        std::os::unix::fs::symlink("/etc/hostname", d.join("abs-link")).expect("symlink");
        std::os::unix::fs::symlink("nowhere", d.join("a/dangling")).expect("symlink");
        std::os::unix::fs::symlink("b", d.join("a/dir-link")).expect("symlink");
        git(d, &["add", "-A"], 0);
        // A submodule entry: a gitlink pointing at some commit id.
        git(
            d,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                "160000,1234567890123456789012345678901234567890,vendor/sub",
            ],
            0,
        );
        git(d, &["commit", "-q", "-m", "first"], TIME1);
        git(d, &["tag", "-a", "-m", "first", TAG1], TIME1);
        // Second tag: changed content, an exec bit flipped, a file turned into a
        // symlink, a file removed, a file added.
        write(&d.join("a/readme"), "readme, second edition\n");
        chmod(&d.join("a/readme"), 0o755);
        fs::remove_file(d.join("empty")).expect("rm");
        std::os::unix::fs::symlink("a/readme", d.join("empty")).expect("symlink");
        fs::remove_file(d.join("many/entry-00007.ebuild")).expect("rm");
        write(&d.join("new/file"), "new\n");
        git(d, &["add", "-A"], 0);
        // `add -A` dropped the gitlink (no such directory in the work tree).
        git(
            d,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                "160000,1234567890123456789012345678901234567890,vendor/sub",
            ],
            0,
        );
        git(d, &["commit", "-q", "-m", "second"], TIME2);
        git(d, &["tag", TAG2], TIME2);
        Fixture { dir }
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }

    fn git_dir(&self) -> PathBuf {
        self.dir.path().join(".git")
    }

    /// `git archive TAG | tar -x` into a fresh directory.
    fn archive(&self, tag: &str) -> tempfile::TempDir {
        let out = tempfile::tempdir().expect("tempdir");
        let mut archive = Command::new("git")
            .arg("--git-dir")
            .arg(self.git_dir())
            .args(["archive", "--format=tar", tag])
            .stdout(Stdio::piped())
            .spawn()
            .expect("git archive");
        let stdout = archive.stdout.take().expect("piped stdout");
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(out.path())
            .stdin(stdout)
            .status()
            .expect("tar");
        assert!(tar.success(), "tar -x failed");
        assert!(
            archive.wait().expect("wait").success(),
            "git archive failed"
        );
        out
    }

    /// A third tag, newer than the others, made while something may be mounted.
    fn add_third_tag(&self) {
        write(&self.work().join("third"), "third\n");
        git(self.work(), &["add", "third"], 0);
        git(self.work(), &["commit", "-q", "-m", "third"], TIME3);
        git(self.work(), &["tag", "-a", "-m", "third", TAG3], TIME3);
    }
}

/// An empty directory every user can reach, to mount on.
fn mountpoint() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    chmod(d.path(), 0o755);
    d
}

fn mount(fx: &Fixture, view: View, at: &Path) -> MountedFs {
    portroot_fs::mount(&fx.git_dir(), view, at, &MountOptions::default()).expect("mount")
}

/// Mount `tag` with the requests coming through `transport`.
fn mount_through(fx: &Fixture, tag: &str, at: &Path, transport: portroot_fs::IoUring) -> MountedFs {
    let opts = MountOptions {
        io_uring: transport,
        ..MountOptions::default()
    };
    portroot_fs::mount(&fx.git_dir(), View::Ref(tag.into()), at, &opts).expect("mount")
}

/// What one path looks like: type, exec bit, size, content, link target.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { exec: bool, content: Vec<u8> },
    Link(PathBuf),
}

/// Every path under `root` with what it is. File content is read through
/// the filesystem, so this also checks `read`.
fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let path = e.path();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            let node = if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(&path).expect("readlink"))
            } else if meta.is_dir() {
                stack.push(path);
                Node::Dir
            } else {
                let content = fs::read(&path).expect("read");
                assert_eq!(content.len() as u64, meta.len(), "size of {rel:?}");
                Node::File {
                    exec: meta.mode() & 0o111 != 0,
                    content,
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// Compare the mounted tree with the extracted archive, then check what only
/// the mount promises: root ownership, exact modes and the commit time.
fn assert_same_tree(expected: &Path, mounted: &Path, time: i64) {
    let want = walk(expected);
    let got = walk(mounted);
    let want_paths: Vec<_> = want.keys().collect();
    let got_paths: Vec<_> = got.keys().collect();
    assert_eq!(got_paths, want_paths, "paths differ");
    for (path, node) in &want {
        assert_eq!(got.get(path), Some(node), "{path:?} differs");
    }
    for (path, node) in &got {
        let meta = fs::symlink_metadata(mounted.join(path)).expect("lstat");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of {path:?}");
        assert_eq!(meta.mtime(), time, "mtime of {path:?}");
        assert_eq!(meta.ctime(), time, "ctime of {path:?}");
        let perm = meta.mode() & 0o7777;
        match node {
            Node::Dir => assert_eq!(perm, 0o755, "mode of {path:?}"),
            Node::File { exec: true, .. } => assert_eq!(perm, 0o755, "mode of {path:?}"),
            Node::File { exec: false, .. } => assert_eq!(perm, 0o644, "mode of {path:?}"),
            Node::Link(_) => {}
        }
    }
}

#[test]
fn fs_mount_two_tags_match_git_archive() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    for (tag, time) in [(TAG1, TIME1), (TAG2, TIME2)] {
        let expected = fx.archive(tag);
        let at = mountpoint();
        let m = mount(&fx, View::Ref(tag.into()), at.path());
        assert_same_tree(expected.path(), at.path(), time);
        assert!(
            at.path().join("vendor/sub").is_dir(),
            "submodule as empty dir"
        );
        assert_eq!(
            fs::read_dir(at.path().join("vendor/sub"))
                .expect("ls")
                .count(),
            0
        );
        m.unmount().expect("unmount");
        util::assert_no_mounts_under(at.path());
    }
}

/// Turn on FUSE over io_uring for mounts made from now on (root; Linux
/// 6.14+). `.ci/run` does the same before the tests; a kernel without the
/// parameter fails here, loudly, rather than skip the io_uring path.
fn enable_io_uring() {
    let param = portroot_fs::ring::ENABLE_PARAM;
    if !portroot_fs::ring::kernel_allows() {
        fs::write(param, "1")
            .unwrap_or_else(|e| panic!("cannot enable FUSE over io_uring: {param}: {e}"));
    }
}

#[test]
fn fs_mount_io_uring_and_dev_fuse_serve_the_same_tree() {
    if !util::require_root() {
        return;
    }
    enable_io_uring();
    let fx = Fixture::new();
    let expected = fx.archive(TAG2);
    for mode in [portroot_fs::IoUring::On, portroot_fs::IoUring::Off] {
        let at = mountpoint();
        let m = mount_through(&fx, TAG2, at.path(), mode);
        assert_same_tree(expected.path(), at.path(), TIME2);
        // A write through either transport is refused the same way.
        let err = fs::write(at.path().join("new-file"), "x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{mode:?}");
        if mode == portroot_fs::IoUring::On {
            assert!(m.transport().starts_with("io_uring"), "{}", m.transport());
            assert!(m.ring_requests() > 0, "requests came through the rings");
        } else {
            assert_eq!(m.transport(), "/dev/fuse");
            assert_eq!(m.ring_requests(), 0);
        }
        m.unmount().expect("unmount");
        util::assert_no_mounts_under(at.path());
    }
}

/// Whether every page of open file `f` (at `path`) is in the page cache
/// (mincore of a mapping).
fn resident(f: &fs::File, path: &Path) -> bool {
    let len = f.metadata().expect("stat").len() as usize;
    if len == 0 {
        return true;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh read-only shared mapping of an open file; only its
    // residency is queried, and it is unmapped before return.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap {path:?}");
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above, of `len` bytes.
    unsafe { libc::munmap(map, len) };
    assert_eq!(rc, 0, "mincore {path:?}");
    vec.iter().all(|v| v & 1 == 1)
}

#[test]
fn fs_mount_files_of_a_read_directory_reach_the_page_cache_unasked() {
    if !util::require_root() {
        return;
    }
    enable_io_uring();
    let fx = Fixture::with_many(100);
    for mode in [portroot_fs::IoUring::On, portroot_fs::IoUring::Off] {
        let at = mountpoint();
        let m = mount_through(&fx, TAG1, at.path(), mode);
        // A reader that reads files, then lists a directory and reads its
        // first file: the daemon stores the others into the kernel's page
        // cache so their reads never reach it.
        fs::read(at.path().join("a/readme")).expect("read");
        let many = at.path().join("many");
        let names: Vec<PathBuf> = fs::read_dir(&many)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(names.len(), 100);
        // Held open (no request: the daemon does not implement open), so a
        // drop_caches of a test running alongside cannot evict them.
        let others: Vec<(fs::File, &PathBuf)> = names
            .iter()
            .filter(|p| !p.ends_with("entry-00000.ebuild"))
            .map(|p| (fs::File::open(p).expect("open"), p))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            fs::read(many.join("entry-00000.ebuild")).expect("read"),
            b"0\n"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut missing: Vec<&(fs::File, &PathBuf)> = others.iter().collect();
        // Stores are best effort: one waits a few milliseconds at most for
        // the kernel to take the inode in, which a loaded machine (the rest
        // of the suite runs alongside) may exceed for a few files. When the
        // stores went nowhere, most files stayed out.
        let tolerated = others.len() / 10;
        while missing.len() > tolerated && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            missing.retain(|(f, p)| !resident(f, p));
        }
        assert!(
            missing.len() <= tolerated,
            "{mode:?}: {} of {} files never reached the page cache, e.g. {:?}",
            missing.len(),
            others.len(),
            missing.first().map(|m| m.1)
        );
        // What was stored is the file's content.
        for p in names.iter().take(5) {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("name");
            let n: usize = stem.trim_start_matches("entry-").parse().expect("number");
            assert_eq!(fs::read(p).expect("read"), format!("{n}\n").as_bytes());
        }
        // Open files would keep the detached mount's connection alive.
        drop(missing);
        drop(others);
        m.unmount().expect("unmount");
        util::assert_no_mounts_under(at.path());
    }
}

#[test]
fn fs_mount_all_tags_view_has_latest_and_new_tags() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let at = mountpoint();
    let m = mount(&fx, View::AllTags, at.path());
    let mnt = at.path();
    let list = |p: &Path| {
        let mut v: Vec<String> = fs::read_dir(p)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(mnt), [TAG1, TAG2, "latest"]);
    assert_eq!(
        fs::read_link(mnt.join("latest")).expect("latest"),
        Path::new(TAG2)
    );
    for (tag, time) in [(TAG1, TIME1), (TAG2, TIME2)] {
        assert_same_tree(fx.archive(tag).path(), &mnt.join(tag), time);
    }
    assert_eq!(
        fs::read(mnt.join("latest/new/file")).expect("via latest"),
        b"new\n"
    );

    fx.add_third_tag();
    // The new tag is reachable by name at once (lookups are never cached
    // negatively) and appears in the listing once the refs watcher notices.
    assert_same_tree(fx.archive(TAG3).path(), &mnt.join(TAG3), TIME3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while list(mnt).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(list(mnt), [TAG1, TAG2, TAG3, "latest"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(mnt.join("latest")).expect("latest") != Path::new(TAG3)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fs::read_link(mnt.join("latest")).expect("latest"),
        Path::new(TAG3)
    );
    m.unmount().expect("unmount");
    util::assert_no_mounts_under(at.path());
}

/// `setpriv` as uid/gid 250 (portage), no supplementary groups.
fn as_portage(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", "250", "--regid", "250", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv")
}

#[test]
fn fs_mount_uid_250_reads_and_every_write_is_erofs() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let at = mountpoint();
    let m = mount(&fx, View::Ref(TAG1.into()), at.path());
    let mnt = at.path();

    let deep = mnt.join("a/b/c/deep.txt");
    let out = as_portage(&["cat", deep.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "uid 250 cat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"deep\n");
    let out = as_portage(&[
        "sh",
        "-c",
        &format!("echo x > '{}'", mnt.join("a/x").display()),
    ]);
    assert!(!out.status.success(), "uid 250 must not create files");

    let erofs = |what: &str, r: std::io::Result<()>| {
        let err = r.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    let file = mnt.join("a/readme");
    erofs("create", fs::File::create(mnt.join("newfile")).map(drop));
    erofs(
        "open for write",
        fs::OpenOptions::new().write(true).open(&file).map(drop),
    );
    erofs(
        "append",
        fs::OpenOptions::new().append(true).open(&file).map(drop),
    );
    erofs("mkdir", fs::create_dir(mnt.join("newdir")));
    erofs("unlink", fs::remove_file(&file));
    erofs("rmdir", fs::remove_dir(mnt.join("vendor/sub")));
    erofs("rename", fs::rename(&file, mnt.join("a/renamed")));
    erofs("link", fs::hard_link(&file, mnt.join("a/hard")));
    erofs(
        "symlink",
        std::os::unix::fs::symlink("x", mnt.join("a/sym")),
    );
    erofs(
        "chmod",
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)),
    );
    erofs("chown", std::os::unix::fs::chown(&file, Some(1), Some(1)));
    let c = CString::new(file.as_os_str().as_bytes()).expect("cstring");
    let name = CString::new("user.test").expect("cstring");
    let libc_result = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: valid NUL-terminated strings and a 1-byte buffer for the call.
    erofs(
        "setxattr",
        libc_result(unsafe {
            libc::setxattr(c.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0)
        }),
    );
    // SAFETY: valid NUL-terminated strings.
    erofs(
        "removexattr",
        libc_result(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }),
    );
    // SAFETY: a valid NUL-terminated path.
    erofs(
        "truncate",
        libc_result(unsafe { libc::truncate(c.as_ptr(), 0) }),
    );
    // SAFETY: a valid path; a null times pointer means "now".
    erofs(
        "utimes",
        libc_result(unsafe { libc::utimes(c.as_ptr(), std::ptr::null()) }),
    );
    let node = CString::new(mnt.join("fifo").as_os_str().as_bytes()).expect("cstring");
    // SAFETY: a valid NUL-terminated path.
    erofs(
        "mknod",
        libc_result(unsafe { libc::mkfifo(node.as_ptr(), 0o644) }),
    );

    // Reading xattrs: there are none.
    let mut buf = [0u8; 64];
    // SAFETY: valid strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
    // SAFETY: a valid path and a buffer of the given length.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 0, "no attribute names");

    // Nothing changed.
    assert_eq!(fs::read(&file).expect("read"), b"readme\n");
    m.unmount().expect("unmount");
    util::assert_no_mounts_under(at.path());
}

#[test]
fn fs_mount_parallel_readers_get_correct_contents() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let expected = fx.archive(TAG2);
    let want = walk(expected.path());
    let at = mountpoint();
    let m = mount(&fx, View::Ref(TAG2.into()), at.path());
    let files: Vec<(PathBuf, Vec<u8>)> = want
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { content, .. } => Some((p.clone(), content.clone())),
            _ => None,
        })
        .collect();
    std::thread::scope(|s| {
        for t in 0..8usize {
            let files = &files;
            let mnt = at.path();
            s.spawn(move || {
                // Each reader starts somewhere else and reads in small chunks,
                // so requests for the same blobs interleave.
                let n = files.len();
                for i in 0..n {
                    let (path, content) = &files[(i * 7 + t * n / 8) % n];
                    let mut f = fs::File::open(mnt.join(path)).expect("open");
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096 + 17];
                    loop {
                        let k = f.read(&mut chunk).expect("read");
                        if k == 0 {
                            break;
                        }
                        got.extend_from_slice(&chunk[..k]);
                    }
                    assert_eq!(&got, content, "{path:?} in reader {t}");
                }
            });
        }
    });
    m.unmount().expect("unmount");
    util::assert_no_mounts_under(at.path());
}

#[test]
fn fs_mount_readdir_of_5000_entries_is_complete_and_stable() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::with_many(MANY);
    let at = mountpoint();
    let m = mount(&fx, View::Ref(TAG1.into()), at.path());
    let list = || {
        fs::read_dir(at.path().join("many"))
            .expect("ls")
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name().to_string_lossy().into_owned(), e.ino())
            })
            .collect::<Vec<_>>()
    };
    let first = list();
    assert_eq!(first.len(), MANY);
    let mut names: Vec<_> = first.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    let want: Vec<_> = (0..MANY).map(|i| format!("entry-{i:05}.ebuild")).collect();
    assert_eq!(names, want);
    assert_eq!(
        list(),
        first,
        "a second listing is identical, inodes included"
    );
    // readdir's inode numbers agree with stat's.
    for (name, ino) in first.iter().step_by(499) {
        let meta = fs::metadata(at.path().join("many").join(name)).expect("stat");
        assert_eq!(meta.ino(), *ino, "{name}");
    }
    m.unmount().expect("unmount");
    util::assert_no_mounts_under(at.path());
}

/// The daemon's live inode records, which it reports as statfs `f_files`.
fn inode_records(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path; statvfs only writes `st`.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_files
}

#[test]
fn fs_mount_forgotten_inodes_are_freed_and_keep_their_numbers() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::with_many(2000);
    let at = mountpoint();
    let m = mount(&fx, View::Ref(TAG1.into()), at.path());
    let inos = |root: &Path| -> BTreeMap<PathBuf, u64> {
        walk(root)
            .into_keys()
            .map(|p| {
                let ino = fs::symlink_metadata(root.join(&p)).expect("lstat").ino();
                (p, ino)
            })
            .collect()
    };
    let before = inos(at.path());
    let entries = before.len() as u64;
    assert!(entries > 2000, "{entries}");
    // Every entry the kernel holds has a record; listing alone adds none
    // beyond what the kernel took (the root is the one extra).
    let held = inode_records(at.path());
    assert!(
        held > entries / 2 && held <= entries + 1,
        "{held} records for {entries} entries"
    );
    // Make the kernel let go of every unused inode: it sends FORGET for each,
    // and the daemon drops their records.
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop dentries and inodes");
    wait_for("the kernel's forgets", || {
        inode_records(at.path()) < entries / 4
    });
    // Looked up again, every path has the number it had: numbers come from
    // the path, not from an allocation that died with the record.
    let after = inos(at.path());
    assert_eq!(after, before, "inode numbers changed after forget");
    assert_eq!(
        fs::read(at.path().join("many/entry-01999.ebuild")).expect("read"),
        b"1999\n"
    );
    m.unmount().expect("unmount");
    util::assert_no_mounts_under(at.path());
}

fn mounted_at(path: &Path) -> bool {
    let p = path.canonicalize().expect("canonical");
    util::mountpoints().iter().any(|m| Path::new(m) == p)
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live `portroot mount` daemons whose command line ends with `mountpoint`.
fn daemons_for(mountpoint: &Path) -> Vec<i32> {
    let want = mountpoint.canonicalize().expect("canonical");
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat.rsplit(')').next()?.trim_start().starts_with('Z');
            let ours = args.iter().any(|a| *a == b"--foreground")
                && args.last() == Some(&want.as_os_str().as_bytes());
            (ours && !zombie).then_some(pid)
        })
        .collect()
}

fn foreground(store: &Path, fx: &Fixture, at: &Path) -> Child {
    foreground_with(store, fx, at, &[])
}

fn foreground_with(store: &Path, fx: &Fixture, at: &Path, extra: &[&str]) -> Child {
    foreground_cmd(store, fx, at, extra)
        .spawn()
        .expect("spawn portroot mount --foreground")
}

fn foreground_cmd(store: &Path, fx: &Fixture, at: &Path, extra: &[&str]) -> Command {
    let mut cmd = util::portroot(store);
    cmd.args(["mount", "--foreground", "--tag", TAG1, "--git-dir"])
        .arg(fx.git_dir())
        .args(extra)
        .arg(at)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[test]
fn fs_mount_cli_background_mount_then_umount() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    let at = mountpoint();
    let expected = fx.archive(TAG1);
    util::ok(
        util::portroot(store.path())
            .args(["mount", "--tag", TAG1, "--git-dir"])
            .arg(fx.git_dir())
            .arg(at.path()),
    );
    // Ready on return: no waiting needed.
    assert_same_tree(expected.path(), at.path(), TIME1);
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.contains(&*at.path().to_string_lossy()))
        .expect("our mount in mountinfo");
    // The daemon asks the kernel itself (no fusermount3), and fuser mounts
    // the plain `fuse` type: the source says whose mount it is.
    assert!(line.contains(" - fuse portroot:"), "{line}");
    assert!(
        line.contains(&format!("@{TAG1}")),
        "fsname names the tag: {line}"
    );
    assert!(
        line.contains("allow_other") && line.contains("default_permissions"),
        "{line}"
    );
    assert_eq!(
        daemons_for(at.path()).len(),
        1,
        "one daemon serves the mount"
    );
    util::ok(util::portroot(store.path()).arg("umount").arg(at.path()));
    util::assert_no_mounts_under(at.path());
    assert!(
        daemons_for(at.path()).is_empty(),
        "umount waits for the daemon to exit"
    );
    let err = util::fails(util::portroot(store.path()).arg("umount").arg(at.path()), 1);
    assert!(err.contains("not mounted"), "{err}");
}

#[test]
fn fs_mount_cli_without_fusermount3_mounts_and_unmounts() {
    if !util::require_root() {
        return;
    }
    // A host without fuse3: the daemon mounts through mount(2) itself (fstype
    // plain `fuse`, no subtype) and umount must still know the mount as ours.
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    let at = mountpoint();
    let no_tools = tempfile::tempdir().expect("empty PATH dir");
    let out = util::run(
        util::portroot(store.path())
            .env("PATH", no_tools.path())
            .args(["mount", "--tag", TAG1, "--git-dir"])
            .arg(fx.git_dir())
            .arg(at.path()),
    );
    assert!(out.status.success(), "{out:?}");
    assert_same_tree(fx.archive(TAG1).path(), at.path(), TIME1);
    util::ok(
        util::portroot(store.path())
            .env("PATH", no_tools.path())
            .arg("umount")
            .arg(at.path()),
    );
    util::assert_no_mounts_under(at.path());
    assert!(daemons_for(at.path()).is_empty(), "the daemon exited");
}

#[test]
fn fs_mount_cli_busy_umount_says_so() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    let at = mountpoint();
    util::ok(
        util::portroot(store.path())
            .args(["mount", "--tag", TAG1, "--git-dir"])
            .arg(fx.git_dir())
            .arg(at.path()),
    );
    let holder = fs::File::open(at.path().join("a/readme")).expect("open");
    let err = util::fails(util::portroot(store.path()).arg("umount").arg(at.path()), 1);
    assert!(err.contains("busy"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    drop(holder);
    util::ok(util::portroot(store.path()).arg("umount").arg(at.path()));
    util::assert_no_mounts_under(at.path());
}

#[test]
fn fs_mount_sigint_of_foreground_unmounts() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    let at = mountpoint();
    let mut child = foreground(store.path(), &fx, at.path());
    wait_for("the foreground mount", || mounted_at(at.path()));
    assert_eq!(
        fs::read(at.path().join("a/readme")).expect("read"),
        b"readme\n"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    assert!(status.success(), "clean exit after Ctrl-C: {status}");
    util::assert_no_mounts_under(at.path());
}

#[test]
fn fs_mount_sigkill_of_daemon_leaves_no_dead_mount() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    // The fs crate's reaper removes the mount through either transport
    // (through io_uring the connection outlives the daemon for a while), with
    // no fusermount3: the daemon runs with a PATH that has none, as on a
    // machine without fuse3.
    let no_tools = tempfile::tempdir().expect("empty PATH dir");
    for transport in ["off", "on"] {
        let at = mountpoint();
        let mut child = foreground_cmd(store.path(), &fx, at.path(), &["--io-uring", transport])
            .env("PATH", no_tools.path())
            .spawn()
            .expect("spawn portroot mount --foreground");
        wait_for("the foreground mount", || mounted_at(at.path()));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        wait_for("auto-unmount after SIGKILL", || !mounted_at(at.path()));
        util::assert_no_mounts_under(at.path());
        assert!(
            fs::read_dir(at.path()).is_ok(),
            "no dead endpoint left ({transport})"
        );
        // Nothing of the daemon is left running: the reaper has exited too.
        let mp = at.path().to_string_lossy().into_owned();
        wait_for("the reaper to exit", || {
            util::processes_mentioning(&mp).is_empty()
        });
    }
}

#[test]
fn fs_mount_bad_input_fails_with_one_line() {
    if !util::require_root() {
        return;
    }
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    let at = mountpoint();
    let one_line = |args: &[&str], mp: &Path, expect: &str| {
        let err = util::fails(
            util::portroot(store.path()).arg("mount").args(args).arg(mp),
            1,
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(expect), "{expect:?} in {err}");
        if expect != "already mounted" {
            util::assert_no_mounts_under(mp);
        }
    };
    let gd = fx.git_dir();
    let gd = gd.to_str().expect("utf8");
    one_line(
        &["--git-dir", gd, "--tag", "1999-01-01"],
        at.path(),
        "unknown ref \"1999-01-01\"",
    );
    one_line(&["--tag", TAG1], at.path(), "no git repository at");
    one_line(&["--repo", "nope", "--all"], at.path(), "repos/nope.git");
    one_line(
        &["--git-dir", "/nonexistent/x.git", "--tag", TAG1],
        at.path(),
        "/nonexistent/x.git",
    );
    one_line(
        &["--git-dir", gd, "--tag", TAG1],
        &at.path().join("missing"),
        "does not exist",
    );
    let file = store.path().join("a-file");
    write(&file, "x");
    one_line(&["--git-dir", gd, "--tag", TAG1], &file, "not a directory");
    one_line(&["--git-dir", gd, "--tag", TAG1], fx.work(), "not empty");
    let m = mount(&fx, View::Ref(TAG1.into()), at.path());
    one_line(
        &["--git-dir", gd, "--tag", TAG1],
        at.path(),
        "already mounted",
    );
    m.unmount().expect("unmount");
    // Usage errors are clap's: exit 2.
    util::fails(
        util::portroot(store.path())
            .args(["mount", "--tag", TAG1, "--all"])
            .arg(at.path()),
        2,
    );
    util::fails(util::portroot(store.path()).arg("mount").arg(at.path()), 2);
    util::assert_no_mounts_under(at.path());
}

#[test]
fn fs_mount_isatty_is_enotty_and_logs_nothing() {
    if !util::require_root() {
        return;
    }
    // Python's open() asks TCGETS of every file it opens: a world rebuild
    // asks thousands of times. The answer is "not a terminal", with nothing
    // printed by the daemon, through either transport.
    let fx = Fixture::new();
    let store = tempfile::tempdir().expect("store");
    for transport in ["off", "on"] {
        let at = mountpoint();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = foreground_cmd(store.path(), &fx, at.path(), &["--io-uring", transport])
            .stderr(log.reopen().expect("reopen log"))
            .spawn()
            .expect("spawn portroot mount --foreground");
        wait_for("the foreground mount", || mounted_at(at.path()));
        for _ in 0..3 {
            let f = fs::File::open(at.path().join("a/readme")).expect("open");
            // SAFETY: isatty on a descriptor this test owns.
            let tty = unsafe { libc::isatty(std::os::fd::AsRawFd::as_raw_fd(&f)) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((tty, errno), (0, Some(libc::ENOTTY)), "{transport}");
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
        assert!(child.wait().expect("wait").success());
        let printed = fs::read_to_string(log.path()).expect("read log");
        assert!(
            !printed.contains("WARN") && !printed.contains("ioctl"),
            "the daemon printed ({transport}):\n{printed}"
        );
    }
}
