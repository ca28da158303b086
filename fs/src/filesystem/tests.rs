//! Unit tests of `GitFs`: no mount, inode numbers in and `Result`s out.

use super::*;
use crate::store::tests::{fixture, git};
use fuser::Errno;

fn fs(view: View) -> (tempfile::TempDir, GitFs) {
    let dir = fixture();
    let store = GitStore::open(&dir.path().join(".git")).expect("open");
    let fs = GitFs::new(store, &view, 1 << 20).expect("fs");
    (dir, fs)
}

fn names(fs: &GitFs, ino: Ino, offset: u64) -> Vec<String> {
    let mut out = Vec::new();
    fs.readdir(ino, offset, |it| {
        out.push(String::from_utf8_lossy(it.name).into_owned());
        false
    })
    .expect("readdir");
    out
}

fn path_attr(fs: &GitFs, path: &str) -> FileAttr {
    let mut ino = Ino::ROOT;
    let mut attr = fs.getattr(ino).expect("root");
    for part in path.split('/') {
        attr = fs.lookup(ino, OsStr::new(part)).expect(part);
        ino = Ino(attr.ino.0);
    }
    attr
}

#[test]
fn lookup_and_read_follow_the_tree() {
    let (_d, fs) = fs(View::Ref("one".into()));
    let file = path_attr(&fs, "a/b/file");
    assert_eq!(file.size, 6);
    assert_eq!(file.perm, 0o644);
    let (blob, range) = fs.read(Ino(file.ino.0), 1, 3).expect("read");
    assert_eq!(&blob[range], b"ell");
    let (blob, range) = fs.read(Ino(file.ino.0), 100, 3).expect("read past end");
    assert!(blob[range].is_empty());
    assert_eq!(path_attr(&fs, "run.sh").perm, 0o755);
    let link = path_attr(&fs, "link");
    assert_eq!(
        &*fs.readlink(Ino(link.ino.0)).expect("readlink"),
        b"a/b/file"
    );
    assert_eq!(link.mtime, crate::attr::system_time(1787270400));
}

#[test]
fn lookup_missing_name_is_enoent() {
    let (_d, fs) = fs(View::Ref("one".into()));
    let err = fs
        .lookup(Ino::ROOT, OsStr::new("nope"))
        .expect_err("missing");
    assert_eq!(err.errno(), Errno::ENOENT);
}

#[test]
fn unknown_inode_is_an_errno_not_a_panic() {
    let (_d, fs) = fs(View::Ref("one".into()));
    for err in [
        fs.getattr(Ino(999)).expect_err("getattr"),
        fs.read(Ino(999), 0, 10).expect_err("read"),
        fs.readlink(Ino(999)).expect_err("readlink"),
        fs.readdir(Ino(999), 0, |_| false).expect_err("readdir"),
        fs.lookup(Ino(999), OsStr::new("x")).expect_err("lookup"),
    ] {
        assert_eq!(err.errno(), Errno::ENOENT);
    }
    fs.forget(Ino(999), 1);
    let file = path_attr(&fs, "empty");
    assert_eq!(
        fs.readdir(Ino(file.ino.0), 0, |_| false)
            .expect_err("not dir")
            .errno(),
        Errno::ENOTDIR
    );
    assert_eq!(
        fs.read(Ino::ROOT, 0, 1).expect_err("dir").errno(),
        Errno::EISDIR
    );
    assert_eq!(
        fs.readlink(Ino(file.ino.0)).expect_err("not link").errno(),
        Errno::EINVAL
    );
    assert_eq!(
        fs.getxattr(Ino(file.ino.0)).expect_err("no attr").errno(),
        Errno::NO_XATTR
    );
}

#[test]
fn readdir_honours_offsets_and_stops_when_full() {
    let (_d, fs) = fs(View::Ref("one".into()));
    assert_eq!(
        names(&fs, Ino::ROOT, 0),
        [".", "..", "a", "empty", "link", "run.sh"]
    );
    assert_eq!(names(&fs, Ino::ROOT, 3), ["empty", "link", "run.sh"]);
    assert!(names(&fs, Ino::ROOT, 6).is_empty());
    let mut seen = 0;
    fs.readdir(Ino::ROOT, 0, |_| {
        seen += 1;
        seen == 2
    })
    .expect("readdir");
    assert_eq!(seen, 2, "stops when add says full");
}

#[test]
fn inodes_are_stable_and_keyed_by_parent_and_name() {
    let (_d, fs) = fs(View::Ref("one".into()));
    let a = path_attr(&fs, "a/b/file").ino;
    let mut listed = None;
    let b = path_attr(&fs, "a/b").ino;
    fs.readdir(Ino(b.0), 2, |it| {
        listed = Some(it.ino);
        true
    })
    .expect("readdir");
    assert_eq!(listed, Some(Ino(a.0)), "readdir and lookup agree");
    assert_eq!(path_attr(&fs, "a/b/file").ino, a);
}

#[test]
fn readdir_stores_nothing_and_readdirplus_counts_what_it_sends() {
    let (_d, fs) = fs(View::Ref("one".into()));
    assert_eq!(names(&fs, Ino::ROOT, 0).len(), 6);
    assert_eq!(fs.inode_count(), 1, "plain readdir adds no records");
    let mut listed = Vec::new();
    fs.readdir(Ino::ROOT, 2, |it| {
        listed.push(it.ino);
        false
    })
    .expect("readdir");

    // A reply with room for `.`, `..` and two children.
    let mut sent = Vec::new();
    fs.readdirplus(Ino::ROOT, 0, |it, attr, _ttl| {
        if sent.len() == 4 {
            return true;
        }
        assert_eq!(attr.ino.0, it.ino.0);
        sent.push((String::from_utf8_lossy(it.name).into_owned(), attr.size));
        false
    })
    .expect("readdirplus");
    assert_eq!(
        sent,
        [
            (".".into(), DIR_SIZE),
            ("..".into(), DIR_SIZE),
            ("a".into(), DIR_SIZE),
            ("empty".into(), 0)
        ]
    );
    assert_eq!(
        fs.inode_count(),
        3,
        "the two children sent, not the dots nor the refused one"
    );
    let a = fs.lookup(Ino::ROOT, OsStr::new("a")).expect("a");
    assert_eq!(
        Ino(a.ino.0),
        listed[0],
        "readdir, readdirplus and lookup agree"
    );
    fs.forget(Ino(a.ino.0), 2);
    assert_eq!(
        fs.inode_count(),
        2,
        "lookup and readdirplus references both counted"
    );

    let mut rest = Vec::new();
    fs.readdirplus(Ino::ROOT, 4, |it, attr, _| {
        rest.push((it.name.to_vec(), attr.size, it.ino));
        false
    })
    .expect("readdirplus");
    let rest_names: Vec<_> = rest.iter().map(|r| r.0.clone()).collect();
    assert_eq!(rest_names, [b"link".to_vec(), b"run.sh".to_vec()]);
    assert_eq!(rest[0].1, 8, "symlink size is its target's length");
    assert_eq!(rest[0].2, listed[2]);
    assert_eq!(fs.inode_count(), 4);
}

#[test]
fn reading_then_listing_prefetches_but_listing_alone_does_not() {
    let (_d, fs) = fs(View::Ref("one".into()));
    let asked = |fs: &GitFs| fs.ahead.lock().expect("lock").contains_key(&Ino::ROOT);
    fs.readdirplus(Ino::ROOT, 0, |_, _, _| false)
        .expect("readdirplus");
    assert!(!asked(&fs), "a stat-only walk prefetches nothing");
    let file = path_attr(&fs, "a/b/file");
    fs.read(Ino(file.ino.0), 0, 100).expect("read");
    let run = fs
        .tree(fs.resolved().expect("ref").tree)
        .expect("root tree")
        .iter()
        .find(|e| &*e.name == b"run.sh")
        .map(|e| e.oid)
        .expect("run.sh");
    assert!(!fs.cache().contains(&run));
    fs.readdirplus(Ino::ROOT, 0, |_, _, _| false)
        .expect("readdirplus");
    assert!(asked(&fs), "a listing after reads asks for its files");
    // The prefetch thread fills the cache in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !fs.cache().contains(&run) {
        assert!(
            std::time::Instant::now() < deadline,
            "run.sh never prefetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn all_tags_view_lists_tags_latest_and_new_tags() {
    let (dir, fs) = fs(View::AllTags);
    assert_eq!(names(&fs, Ino::ROOT, 2), ["one", "two", "latest"]);
    let latest = path_attr(&fs, "latest");
    assert_eq!(&*fs.readlink(Ino(latest.ino.0)).expect("readlink"), b"two");
    assert_eq!(path_attr(&fs, "one/a/b/file").size, 6);
    assert_eq!(path_attr(&fs, "two/a/b/file").size, 12);
    assert_eq!(
        path_attr(&fs, "one").mtime,
        crate::attr::system_time(1787270400)
    );
    assert_eq!(
        fs.getattr(Ino::ROOT).expect("root").mtime,
        crate::attr::system_time(1787356800)
    );
    let generation = fs.tags_generation();
    std::fs::write(dir.path().join("new"), "x").expect("write");
    git(dir.path(), &["add", "new"], "");
    git(
        dir.path(),
        &["commit", "-q", "-m", "three"],
        "1787443200 +0000",
    );
    git(
        dir.path(),
        &["tag", "-a", "-m", "three", "three"],
        "1787443200 +0000",
    );
    assert_eq!(names(&fs, Ino::ROOT, 2), ["one", "three", "two", "latest"]);
    assert_ne!(fs.tags_generation(), generation);
    assert_eq!(
        &*fs.readlink(Ino(latest.ino.0)).expect("readlink"),
        b"three"
    );
    assert_eq!(path_attr(&fs, "three/new").size, 1);
}
