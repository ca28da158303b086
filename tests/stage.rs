//! `portroot stage ...` against real tarballs: the fixture stage in every
//! compression, hostile archives, names, leases. Unpacked trees are checked
//! against the tarball's own headers, read back with the tar crate.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use portroot::fixture::stage::{self as fixture, Compression, Entry, Kind, StageTarball};
use portroot_runner::stage::StageStore;

use crate::util;

/// A scratch directory with a store inside.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("creating a temp dir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn stages(&self) -> StageStore {
        StageStore::new(self.store().join("stages"), self.store().join("tmp"))
    }
    fn portroot(&self) -> Command {
        util::portroot(&self.store())
    }
    fn fixture(&self, c: Compression) -> PathBuf {
        StageTarball::build(self.path(), c).expect("building the fixture stage")
    }
    /// `stage add` a tarball and return the stage's rootfs.
    fn add(&self, tarball: &Path, name: Option<&str>) -> PathBuf {
        let mut cmd = self.portroot();
        cmd.args(["stage", "add"]).arg(tarball);
        if let Some(name) = name {
            cmd.args(["--name", name]);
        }
        util::ok(&mut cmd);
        let name = name.map_or_else(
            || portroot_runner::stage::default_name(tarball).expect("a default name"),
            str::to_owned,
        );
        self.stages()
            .resolve(&name)
            .expect("the added stage")
            .rootfs
    }
}

/// Every path under `root` with its type, owner, mode, size, inode, times and
/// symlink target: two equal snapshots mean nothing was touched.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for entry in rd {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let link = fs::read_link(&path).ok();
            let rel = path.strip_prefix(root).unwrap();
            if rel == Path::new("tmp") && m.is_dir() {
                // The scratch directory's own times change with every use;
                // what matters is that it is left empty.
                out.insert(rel.to_owned(), "scratch dir".into());
                walk(root, &path, out);
                continue;
            }
            out.insert(
                rel.to_owned(),
                format!(
                    "{:o} {}:{} {} ino={} mtime={}.{} ctime={}.{} {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    link
                ),
            );
            if m.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Assert two snapshots are equal, showing only what differs.
fn assert_same(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, what: &str) {
    let mut diff = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push(format!("- {} {v}", k.display())),
            Some(w) if w != v => diff.push(format!("~ {} {v} -> {w}", k.display())),
            Some(_) => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push(format!("+ {} {v}", k.display()));
        }
    }
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

/// What a tarball's headers say about one entry.
#[derive(Debug)]
struct Header {
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    link: Option<PathBuf>,
    device: Option<(u32, u32)>,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

/// The headers of `tarball`, keyed by path relative to the root (`.` = root).
fn headers(tarball: &Path) -> BTreeMap<PathBuf, Header> {
    let (reader, _) = portroot_runner::archive::open_decompressed(tarball).unwrap();
    let mut archive = tar::Archive::new(reader);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let raw = entry.path_bytes().into_owned();
        let rel = PathBuf::from(String::from_utf8(raw).unwrap());
        let rel = rel.strip_prefix("./").map(Path::to_path_buf).unwrap_or(rel);
        let rel = if rel.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            rel
        };
        let h = entry.header().clone();
        let xattrs = entry
            .pax_extensions()
            .unwrap()
            .map(|exts| {
                exts.map(Result::unwrap)
                    .filter_map(|e| {
                        let name = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_owned();
                        Some((name, e.value_bytes().to_vec()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let link = entry.link_name().unwrap().map(|l| {
            let l = l.into_owned();
            l.strip_prefix("./").map(Path::to_path_buf).unwrap_or(l)
        });
        out.insert(
            rel,
            Header {
                kind: h.entry_type(),
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap() as u32,
                gid: h.gid().unwrap() as u32,
                mtime: h.mtime().unwrap() as i64,
                link,
                device: (h.entry_type().is_character_special()
                    || h.entry_type().is_block_special())
                .then(|| (h.device_major().unwrap(), h.device_minor().unwrap()))
                .map(|(major, minor)| (major.unwrap(), minor.unwrap())),
                xattrs,
                data,
            },
        );
    }
    out
}

/// Check every property of the unpacked tree against the tarball's headers,
/// and that it holds nothing else.
fn assert_matches_headers(rootfs: &Path, tarball: &Path) {
    let headers = headers(tarball);
    for (rel, h) in &headers {
        let path = rootfs.join(rel);
        let m = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{} missing: {e}", rel.display()));
        let ft = m.file_type();
        let what = rel.display();
        if h.kind == tar::EntryType::Link {
            let target = rootfs.join(h.link.as_ref().unwrap());
            let t = fs::symlink_metadata(&target).unwrap();
            assert_eq!(
                (m.dev(), m.ino()),
                (t.dev(), t.ino()),
                "{what}: not a hardlink"
            );
            assert!(m.nlink() >= 2, "{what}: nlink {}", m.nlink());
            continue;
        }
        match h.kind {
            tar::EntryType::Directory => assert!(ft.is_dir(), "{what}: not a directory"),
            tar::EntryType::Regular => {
                assert!(ft.is_file(), "{what}: not a file");
                assert_eq!(fs::read(&path).unwrap(), h.data, "{what}: content");
            }
            tar::EntryType::Symlink => {
                assert!(ft.is_symlink(), "{what}: not a symlink");
                assert_eq!(&fs::read_link(&path).unwrap(), h.link.as_ref().unwrap());
            }
            tar::EntryType::Char => assert!(ft.is_char_device(), "{what}: not a char device"),
            tar::EntryType::Block => assert!(ft.is_block_device(), "{what}: not a block device"),
            tar::EntryType::Fifo => assert!(ft.is_fifo(), "{what}: not a fifo"),
            other => panic!("{what}: unexpected type {other:?} in the fixture"),
        }
        if let Some((major, minor)) = h.device {
            let rdev = m.rdev();
            assert_eq!(
                (libc::major(rdev), libc::minor(rdev)),
                (major, minor),
                "{what}: device number"
            );
        }
        if !ft.is_symlink() {
            assert_eq!(m.mode() & 0o7777, h.mode, "{what}: mode {:o}", m.mode());
        }
        assert_eq!((m.uid(), m.gid()), (h.uid, h.gid), "{what}: owner");
        assert_eq!(m.mtime(), h.mtime, "{what}: mtime");
        for (name, value) in &h.xattrs {
            let got = xattr::get(&path, name).unwrap();
            assert_eq!(got.as_ref(), Some(value), "{what}: xattr {name}");
        }
    }
    let on_disk: Vec<PathBuf> = snapshot(rootfs).into_keys().collect();
    let in_tar: Vec<PathBuf> = headers
        .keys()
        .filter(|p| p.as_os_str() != ".")
        .cloned()
        .collect();
    assert_eq!(
        on_disk, in_tar,
        "the rootfs holds exactly the tarball's entries"
    );
}

fn add_keeps_everything(c: Compression) {
    let s = Scratch::new();
    let tarball = s.fixture(c);
    let rootfs = s.add(&tarball, None);
    assert_matches_headers(&rootfs, &tarball);
    // The properties the brief singles out, spelled out.
    let m = fs::metadata(rootfs.join(fixture::SETUID_PATH)).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    let cap = xattr::get(rootfs.join(fixture::CAPABILITY_PATH), "security.capability").unwrap();
    assert_eq!(cap.as_deref(), Some(&fixture::CAP_NET_RAW_EP[..]));
    let m = fs::metadata(rootfs.join(fixture::PORTAGE_FILE_PATH)).unwrap();
    assert_eq!((m.uid(), m.gid()), (250, 250));
    let root = fs::metadata(&rootfs).unwrap();
    assert_eq!(root.mode() & 0o7777, 0o755);
    assert_eq!(root.mtime() as u64, fixture::BASE_MTIME);
    // Only the finished stage remains: no scratch directories.
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
}

#[test]
fn stage_add_keeps_owners_modes_xattrs_links_and_nodes_xz() {
    if !util::require_root() {
        return;
    }
    add_keeps_everything(Compression::Xz);
}

#[test]
fn stage_add_keeps_owners_modes_xattrs_links_and_nodes_bzip2() {
    if !util::require_root() {
        return;
    }
    add_keeps_everything(Compression::Bzip2);
}

#[test]
fn stage_add_keeps_owners_modes_xattrs_links_and_nodes_gzip() {
    if !util::require_root() {
        return;
    }
    add_keeps_everything(Compression::Gzip);
}

#[test]
fn stage_add_keeps_owners_modes_xattrs_links_and_nodes_zstd() {
    if !util::require_root() {
        return;
    }
    add_keeps_everything(Compression::Zstd);
}

#[test]
fn stage_add_keeps_owners_modes_xattrs_links_and_nodes_plain() {
    if !util::require_root() {
        return;
    }
    add_keeps_everything(Compression::None);
}

#[test]
fn fixture_stage_runs_a_login_shell_with_a_clean_environment() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let rootfs = s.add(&s.fixture(Compression::Zstd), None);
    let out = util::ok(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/bin/env", "-i", "HOME=/root", "TERM=dumb"])
            .args(["/bin/bash", "--login", "-c"])
            .arg(format!(
                "echo ${}; id -u; ls /usr/lib/fixture; env | sort",
                fixture::PROFILE_MARKER
            ))
            .env("LEAK_CHECK", "host"),
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"), "/etc/profile was not read:\n{out}");
    assert_eq!(lines.next(), Some("0"));
    assert!(out.contains("linked-a"), "{out}");
    assert!(
        !out.contains("LEAK_CHECK"),
        "host environment leaked:\n{out}"
    );
}

#[test]
fn re_adding_the_same_tarball_changes_nothing() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let tarball = s.fixture(Compression::Gzip);
    s.add(&tarball, None);
    let before = snapshot(&s.store());
    let out = util::ok(s.portroot().args(["stage", "add"]).arg(&tarball));
    assert!(out.contains("already present"), "{out}");
    assert_same(&before, &snapshot(&s.store()), "re-add touched the store");

    // A copy is another file (not in the digest cache): as big as a stored
    // stage, so it is hashed first, found present, and nothing is unpacked.
    let copy = s.path().join("copy-of-stage.tar.gz");
    fs::copy(&tarball, &copy).unwrap();
    let out = util::ok(
        s.portroot()
            .args(["stage", "add", "--name", "copy"])
            .arg(&copy),
    );
    assert!(out.contains("now also named copy"), "{out}");
    let stages = s.stages().list().unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].names, vec!["copy", "stage4-fixture"]);
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
    // The stage directory itself was not touched by the second unpack.
    let dir = s.store().join("stages").join(&stages[0].digest);
    let inner = |snap: &BTreeMap<PathBuf, String>| -> Vec<(PathBuf, String)> {
        snap.iter()
            .filter(|(p, _)| p.starts_with(dir.strip_prefix(s.store()).unwrap()))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect()
    };
    assert_eq!(inner(&snapshot(&s.store())), inner(&before));
}

#[test]
fn names_resolve_move_and_list() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let xz = s.fixture(Compression::Xz);
    let plain = s.fixture(Compression::None);
    s.add(&xz, Some("stage4"));
    let first = s.stages().resolve("stage4").unwrap();
    // Same default name, different file: the name moves, the old stage stays.
    s.add(&plain, Some("stage4"));
    let second = s.stages().resolve("stage4").unwrap();
    assert_ne!(first.digest, second.digest);
    assert!(s.stages().resolve(&first.digest).unwrap().names.is_empty());
    assert_eq!(
        s.stages().resolve(&second.digest[..8]).unwrap().digest,
        second.digest
    );

    let list = util::ok(s.portroot().args(["stage", "list"]));
    assert!(list.contains("stage4"), "{list}");
    assert!(list.contains(first.short_digest()), "{list}");
    assert!(list.contains(second.short_digest()), "{list}");
    assert!(list.contains(&second.files.to_string()), "{list}");

    let err = util::fails(
        s.portroot()
            .args(["stage", "add", "--name", "../x"])
            .arg(&xz),
        2,
    );
    assert!(err.contains("invalid value '../x'"), "{err}");
    let err = util::fails(s.portroot().args(["stage", "rm", "nonesuch"]), 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no stage nonesuch"), "{err}");
}

#[test]
fn removing_a_leased_stage_fails_until_the_lease_ends() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let rootfs = s.add(&s.fixture(Compression::Gzip), Some("s4"));
    let lease = s.stages().lease("s4").unwrap();
    assert_eq!(lease.stage.rootfs, rootfs);

    let err = util::fails(s.portroot().args(["stage", "rm", "s4"]), 1);
    assert!(err.contains("stage s4 is busy: in use by a run"), "{err}");
    assert!(rootfs.join("bin/busybox").exists());

    drop(lease);
    let out = util::ok(s.portroot().args(["stage", "rm", "s4"]));
    assert!(out.contains("removed s4"), "{out}");
    assert!(!rootfs.exists());
    assert!(s.stages().list().unwrap().is_empty());
    assert!(s.stages().lease("s4").is_err());
    assert_eq!(
        fs::read_dir(s.store().join("stages/by-name"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(s.store().join("stages/by-file"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
    let list = util::ok(s.portroot().args(["stage", "list"]));
    assert!(list.contains("no stages"), "{list}");
}

// ---- hostile and broken tarballs ----

fn dir(path: &str) -> Entry {
    entry(path, Kind::Dir, 0o755)
}

fn file(path: &str, data: &[u8]) -> Entry {
    entry(path, Kind::File(data.to_vec()), 0o644)
}

fn entry(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry {
        path: path.to_owned(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: fixture::BASE_MTIME,
        xattrs: Vec::new(),
    }
}

/// Add `tarball` to a store that already holds a good stage; the add must fail
/// with one line containing `expect` (`*` = the tarball's path), leave the store exactly as it was, and
/// write nothing into `outside`.
fn assert_refused(s: &Scratch, tarball: &Path, expect: &str, outside: &Path) {
    let before = snapshot(&s.store());
    let outside_before = snapshot(outside);
    let err = util::fails(s.portroot().args(["stage", "add"]).arg(tarball), 1);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    // `*` stands for the tarball's path.
    let expect = expect.replace('*', &tarball.display().to_string());
    assert!(err.contains(&expect), "expected {expect:?} in: {err}");
    let shown = tarball.display();
    assert_same(
        &before,
        &snapshot(&s.store()),
        &format!("{shown}: store changed"),
    );
    assert_same(
        &outside_before,
        &snapshot(outside),
        &format!("{shown}: wrote outside"),
    );
}

#[test]
fn hostile_tarballs_are_refused_and_leave_nothing_behind() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    s.add(&s.fixture(Compression::Zstd), None);
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let out = outside.display().to_string();
    let cases: Vec<(&str, Vec<Entry>, String)> = vec![
        (
            "dotdot",
            vec![dir("."), file("etc/ok", b"ok"), file("../evil", b"x")],
            "refusing tar entry ./../evil in *: path leaves the root through ..".into(),
        ),
        (
            "dotdot-inside",
            vec![dir("."), dir("a"), file("a/../../evil", b"x")],
            "refusing tar entry ./a/../../evil".into(),
        ),
        (
            "absolute",
            vec![dir("."), file(&format!("{out}/abs"), b"x")],
            format!("refusing tar entry {out}/abs in *: absolute path"),
        ),
        (
            "symlink-absolute",
            vec![
                dir("."),
                entry("a", Kind::Symlink(out.clone()), 0o777),
                file("a/passwd", b"pwned"),
            ],
            "refusing tar entry ./a/passwd in *: path goes through a symlink that leaves the root"
                .into(),
        ),
        (
            "symlink-relative",
            vec![
                dir("."),
                dir("d"),
                entry("d/up", Kind::Symlink("../..".into()), 0o777),
                file("d/up/pwned", b"pwned"),
            ],
            "refusing tar entry ./d/up/pwned in *: path goes through a symlink that leaves the root"
                .into(),
        ),
        (
            "symlink-chain",
            vec![
                dir("."),
                entry("b", Kind::Symlink("c".into()), 0o777),
                entry("c", Kind::Symlink(out.clone()), 0o777),
                dir("b/sub"),
            ],
            "refusing tar entry ./b/sub/ in *: path goes through a symlink".into(),
        ),
        (
            "hardlink-absolute",
            vec![dir("."), entry("h", Kind::Hardlink("/etc/passwd".into()), 0o644)],
            "refusing tar entry ./h in *: hardlink target /etc/passwd: absolute path".into(),
        ),
        (
            "hardlink-dotdot",
            vec![
                dir("."),
                entry("h", Kind::Hardlink("x/../../outside/f".into()), 0o644),
            ],
            "refusing tar entry ./h in *: hardlink target ./x/../../outside/f".into(),
        ),
        (
            "hardlink-through-symlink",
            vec![
                dir("."),
                entry("s", Kind::Symlink("/etc".into()), 0o777),
                entry("h", Kind::Hardlink("s/passwd".into()), 0o644),
            ],
            "refusing tar entry ./h in *: hardlink target ./s/passwd is not an earlier file".into(),
        ),
        (
            "file-over-directory",
            vec![dir("."), dir("d"), file("d/keep", b"x"), file("d", b"flat")],
            "refusing tar entry ./d in *: would replace a directory".into(),
        ),
        (
            "hardlink-unknown",
            vec![dir("."), entry("h", Kind::Hardlink("later".into()), 0o644), file("later", b"")],
            "is not an earlier file of the archive".into(),
        ),
    ];
    for (name, entries, expect) in cases {
        for c in [Compression::None, Compression::Xz] {
            let path = s.path().join(format!("{name}-{c}.tar"));
            fixture::write_tarball(&path, c, &entries).unwrap();
            assert_refused(&s, &path, &expect, &outside);
            fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn broken_tarballs_are_refused_and_leave_nothing_behind() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let good = s.fixture(Compression::Xz);
    s.add(&good, None);
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let plain = s.fixture(Compression::None);
    let plain_bytes = fs::read(&plain).unwrap();
    let xz_bytes = fs::read(&good).unwrap();
    let gz_bytes = fs::read(s.fixture(Compression::Gzip)).unwrap();
    let zst_bytes = fs::read(s.fixture(Compression::Zstd)).unwrap();
    let bz_bytes = fs::read(s.fixture(Compression::Bzip2)).unwrap();

    // The offset of the end-of-archive blocks: past the last entry's data.
    let headers_end = {
        let mut a = tar::Archive::new(plain_bytes.as_slice());
        let mut end = 0;
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            end = e.raw_file_position() + e.size().div_ceil(512) * 512;
        }
        end as usize
    };
    let mut corrupt_xz = xz_bytes.clone();
    let mid = corrupt_xz.len() / 2;
    for b in &mut corrupt_xz[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated-xz",
            xz_bytes[..xz_bytes.len() / 2].to_vec(),
            "tarball",
        ),
        (
            "truncated-gz",
            gz_bytes[..gz_bytes.len() / 2].to_vec(),
            "tarball",
        ),
        (
            "truncated-zst",
            zst_bytes[..zst_bytes.len() / 2].to_vec(),
            "tarball",
        ),
        (
            "truncated-bz2",
            bz_bytes[..bz_bytes.len() / 2].to_vec(),
            "tarball",
        ),
        (
            "truncated-xz-tail",
            xz_bytes[..xz_bytes.len() - 8].to_vec(),
            "tarball",
        ),
        ("corrupt-xz", corrupt_xz, "tarball"),
        (
            "truncated-in-data",
            plain_bytes[..plain_bytes.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "no-end-blocks",
            plain_bytes[..headers_end].to_vec(),
            "no end-of-archive blocks",
        ),
        (
            "not-a-tar",
            b"this is not a tarball\n".repeat(100),
            "not-a-tar.tar is not a tar archive",
        ),
        (
            "short-not-a-tar",
            b"hello\n".to_vec(),
            "is not a tar archive",
        ),
        ("empty", Vec::new(), "empty.tar is empty"),
        ("only-end-blocks", vec![0; 10240], "truncated (no entries)"),
    ];
    for (name, bytes, expect) in cases {
        let path = s.path().join(format!("{name}.tar"));
        fs::write(&path, bytes).unwrap();
        assert_refused(&s, &path, expect, &outside);
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn later_entries_replace_earlier_ones_and_inner_symlinks_are_followed() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let entries = vec![
        dir("."),
        dir("usr"),
        dir("usr/lib"),
        // Merged-/usr style: a relative symlink that stays inside the root is
        // followed, as tar follows it.
        entry("lib", Kind::Symlink("usr/lib".into()), 0o777),
        file("lib/libx.so", b"via the link"),
        file("a", b"first"),
        file("a", b"second"),
        entry("s", Kind::Symlink("a".into()), 0o777),
        file("s", b"a file now"),
        file("n", b"node soon"),
        entry("n", Kind::Fifo, 0o600),
        dir("d"),
        entry("d", Kind::Dir, 0o700),
    ];
    let tarball = s.path().join("replace.tar");
    fixture::write_tarball(&tarball, Compression::None, &entries).unwrap();
    let rootfs = s.add(&tarball, None);
    assert_eq!(
        fs::read(rootfs.join("usr/lib/libx.so")).unwrap(),
        b"via the link"
    );
    assert_eq!(fs::read(rootfs.join("a")).unwrap(), b"second");
    assert!(fs::symlink_metadata(rootfs.join("s")).unwrap().is_file());
    assert_eq!(fs::read(rootfs.join("s")).unwrap(), b"a file now");
    assert!(fs::symlink_metadata(rootfs.join("n"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::metadata(rootfs.join("d")).unwrap().mode() & 0o7777,
        0o700
    );
}

#[test]
fn garbage_collection_removes_only_what_dead_operations_left() {
    // Needs no root: nothing is unpacked.
    let s = Scratch::new();
    let tmp = s.store().join("tmp");
    let stages = s.store().join("stages");
    let dead = tmp.join("stage-dead");
    let live = tmp.join("stage-live");
    let removing = tmp.join("removing-0123-1.2");
    let other = tmp.join("not-ours");
    for d in [&dead, &live, &removing, &other] {
        fs::create_dir_all(d.join("rootfs/usr")).unwrap();
    }
    fs::create_dir_all(stages.join("by-name")).unwrap();
    let gone = "f".repeat(64);
    std::os::unix::fs::symlink(format!("../{gone}"), stages.join("by-name/old")).unwrap();

    // A live add holds an exclusive flock on its directory.
    let held = fs::File::open(&live).unwrap();
    // SAFETY: flock on a descriptor we own; no memory is involved.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );

    let removed = s.stages().collect_garbage().unwrap();
    assert_eq!(removed, 3, "dead add, dead removal, dangling name");
    assert!(!dead.exists());
    assert!(!removing.exists());
    assert!(
        live.join("rootfs/usr").is_dir(),
        "a live unpack was removed"
    );
    assert!(other.exists(), "not ours to remove");
    assert!(fs::symlink_metadata(stages.join("by-name/old")).is_err());
    drop(held);
    // `portroot gc` is how a user gets there.
    let out = util::ok(util::portroot(&s.store()).arg("gc"));
    assert!(!live.exists(), "gc removes a dead unpack: {out}");
    assert!(other.exists(), "not ours to remove");
}

#[test]
fn long_names_and_link_targets_survive() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    // Longer than ustar's 100-byte name field: the tar crate writes GNU
    // long-name records, as GNU tar does for deep /usr/share paths.
    let deep = format!("usr/share/{}/{}", "d".repeat(90), "f".repeat(80));
    let target = format!("../../{}", "t".repeat(150));
    let tarball = s.path().join("long.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&tarball).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_uid(250);
        h.set_gid(250);
        h.set_mtime(fixture::BASE_MTIME);
        h.set_size(4);
        b.append_data(&mut h, &deep, &b"deep"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(fixture::BASE_MTIME);
        h.set_size(0);
        b.append_link(&mut h, "usr/share/long-link", &target)
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let rootfs = s.add(&tarball, None);
    let m = fs::metadata(rootfs.join(&deep)).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (250, 250, 0o640));
    assert_eq!(fs::read(rootfs.join(&deep)).unwrap(), b"deep");
    assert_eq!(
        fs::read_link(rootfs.join("usr/share/long-link")).unwrap(),
        PathBuf::from(&target)
    );
}

#[test]
fn concurrent_adds_of_one_tarball_make_one_stage() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let tarball = s.fixture(Compression::Gzip);
    let children: Vec<_> = (0..3)
        .map(|_| {
            s.portroot()
                .args(["stage", "add"])
                .arg(&tarball)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stages = s.stages().list().unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].names, vec!["stage4-fixture"]);
    assert_matches_headers(&stages[0].rootfs, &tarball);
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
}

/// The hex sha256 of a file, as `stage add --sha256` takes it.
fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let bytes = fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn stage_add_by_url_and_digest_adds_exactly_that_tarball_or_nothing() {
    if !util::require_root() {
        return;
    }
    let s = Scratch::new();
    let tarball = s.fixture(Compression::Xz);
    let digest = sha256_of(&tarball);
    let served = s.path().join("served");
    fs::create_dir(&served).unwrap();
    fs::copy(&tarball, served.join("stage4-amd64.tar.xz")).unwrap();
    let mirror = crate::sync::HttpMirror::start(&served, crate::sync::Serve::Files);
    let url = format!("{}/stage4-amd64.tar.xz", mirror.url());
    let wrong = "0".repeat(64);

    // A wrong digest: one line, exit 1, nothing kept (no stage, no download).
    let out = util::run(
        s.portroot()
            .args(["stage", "add", &url, "--sha256", &wrong]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("sha256 is {digest}, expected {wrong}")),
        "{err}"
    );
    assert!(s.stages().list().unwrap().is_empty());
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
    // The same for a local file, checked as it is unpacked.
    let out = util::run(
        s.portroot()
            .args(["stage", "add", "--sha256", &wrong])
            .arg(&tarball),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing added"));
    assert!(s.stages().list().unwrap().is_empty());
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);

    // The right digest over http: named after the URL's file, download gone.
    util::ok(
        s.portroot()
            .args(["stage", "add", &url, "--sha256", &digest.to_uppercase()]),
    );
    let stage = s
        .stages()
        .resolve("stage4-amd64")
        .expect("named after the URL");
    assert_eq!(stage.digest, digest);
    assert_matches_headers(&stage.rootfs, &tarball);
    assert_eq!(fs::read_dir(s.store().join("tmp")).unwrap().count(), 0);
    // Again by file:// under another name: the same stage, nothing unpacked.
    let file_url = format!("file://{}", tarball.display());
    let out = util::ok(
        s.portroot()
            .args(["stage", "add", &file_url, "--name", "again"]),
    );
    assert!(out.contains("already present"), "{out}");
    assert_eq!(s.stages().resolve("again").unwrap().digest, digest);
    // A local path whose bytes are not the digest asked for is refused even
    // when the store knows the file.
    let out = util::run(
        s.portroot()
            .args(["stage", "add", "--sha256", &wrong])
            .arg(&tarball),
    );
    assert_eq!(out.status.code(), Some(1));
    // A missing file on the server and a bad digest argument.
    let out = util::run(
        s.portroot()
            .args(["stage", "add"])
            .arg(format!("{}/nope.tar.xz", mirror.url())),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));
    let out = util::run(s.portroot().args(["stage", "add", &url, "--sha256", "abc"]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(s.stages().list().unwrap().len(), 1);
}
