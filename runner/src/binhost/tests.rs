use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn write(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A binhost with generation `g1` published, serving `cat/a-1.gpkg.tar`.
fn published() -> (tempfile::TempDir, Binhost) {
    let dir = tempfile::tempdir().unwrap();
    let b = Binhost::new(dir.path().join("binpkgs"));
    b.create("g1", Some("run1")).unwrap();
    write(&b.path("g1").join("cat/a-1.gpkg.tar"), "a");
    b.publish("g1").unwrap();
    (dir, b)
}

#[test]
fn a_new_generation_links_every_file_of_current() {
    let (_d, b) = published();
    let meta = b.create("g2", Some("run2")).unwrap();
    assert_eq!(meta.parent.as_deref(), Some("g1"));
    let (a, c) = (
        fs::metadata(b.path("g1").join("cat/a-1.gpkg.tar")).unwrap(),
        fs::metadata(b.path("g2").join("cat/a-1.gpkg.tar")).unwrap(),
    );
    assert_eq!((a.ino(), a.dev()), (c.ino(), c.dev()));
    assert_ne!(
        fs::metadata(b.path("g1").join("cat")).unwrap().ino(),
        fs::metadata(b.path("g2").join("cat")).unwrap().ino()
    );
    // Still g1 until published.
    assert_eq!(b.current().unwrap().as_deref(), Some("g1"));
    assert!(!b.root().join("generations/.new-g2").exists());
}

#[test]
fn publish_swaps_current_and_rollback_goes_back_one() {
    let (_d, b) = published();
    b.create("g2", None).unwrap();
    write(&b.path("g2").join("cat/b-1.gpkg.tar"), "b");
    b.publish("g2").unwrap();
    assert_eq!(b.current().unwrap().as_deref(), Some("g2"));
    assert!(b.current_link().join("cat/b-1.gpkg.tar").is_file());
    assert_eq!(
        fs::read_link(b.current_link()).unwrap(),
        Path::new("generations/g2")
    );
    assert_eq!(b.rollback().unwrap(), "g1");
    assert_eq!(b.current().unwrap().as_deref(), Some("g1"));
    assert!(!b.current_link().join("cat/b-1.gpkg.tar").exists());
    // Nothing before g1: refused, current unchanged.
    assert!(matches!(b.rollback(), Err(Error::Invalid(_))));
    assert_eq!(b.current().unwrap().as_deref(), Some("g1"));
    // No temporary link left beside current.
    let names: Vec<String> = fs::read_dir(b.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.') || n == ".lock"),
        "{names:?}"
    );
}

#[test]
fn an_unknown_generation_changes_nothing() {
    let (_d, b) = published();
    let history = b.history().unwrap();
    for bad in ["nope", "../g1", ".new-g1", ""] {
        assert!(matches!(b.publish(bad), Err(Error::Invalid(_))), "{bad}");
        assert!(
            matches!(b.set_kept(bad, true), Err(Error::Invalid(_))),
            "{bad}"
        );
    }
    assert!(matches!(b.create("g1", None), Err(Error::Invalid(_))));
    assert_eq!(b.current().unwrap().as_deref(), Some("g1"));
    assert_eq!(b.history().unwrap(), history);
}

#[test]
fn gc_keeps_current_the_previous_published_kept_and_in_use() {
    let (_d, b) = published();
    for g in ["g2", "g3", "g4"] {
        b.create(g, None).unwrap();
        b.publish(g).unwrap();
    }
    b.create("unpublished", None).unwrap();
    b.create("live", None).unwrap();
    b.set_kept("g1", true).unwrap();
    let removed = b.gc(2, &|m| m.id == "live").unwrap();
    assert_eq!(removed, ["g2", "unpublished"]);
    let left: Vec<String> = b.list().unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(left, ["g1", "g3", "g4", "live"]);
    assert_eq!(b.history().unwrap(), ["g1", "g3", "g4"]);
    assert_eq!(b.rollback().unwrap(), "g3");
}

#[test]
fn gc_removes_what_a_crash_left() {
    let (_d, b) = published();
    fs::create_dir_all(b.root().join("generations/.new-g9/cat")).unwrap();
    fs::create_dir_all(b.root().join("generations/orphan")).unwrap();
    fs::write(b.root().join("generations/lost.json"), "{}").unwrap();
    b.gc(2, &|_| false).unwrap();
    let mut names: Vec<String> = fs::read_dir(b.root().join("generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["g1", "g1.json"]);
}

#[test]
fn a_binhost_without_generations_becomes_the_first_ones_parent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("binpkgs");
    write(&root.join("cat/old-1.gpkg.tar"), "old");
    write(&root.join("Packages"), "header\n");
    let b = Binhost::new(&root);
    let meta = b.create("g1", None).unwrap();
    assert_eq!(meta.parent, None);
    assert!(b.path("g1").join("cat/old-1.gpkg.tar").is_file());
    assert!(b.path("g1").join("Packages").is_file());
    assert!(!b.path("g1").join("generations").exists());
    // The old files stay where old clients read them.
    assert!(root.join("cat/old-1.gpkg.tar").is_file());
}

#[test]
fn list_is_oldest_first_with_what_each_record_says() {
    let (_d, b) = published();
    b.create("g2", Some("run2")).unwrap();
    let list = b.list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0].id.as_str(), list[0].published.is_some()),
        ("g1", true)
    );
    assert_eq!(
        (list[1].run.as_deref(), list[1].published),
        (Some("run2"), None)
    );
}

#[test]
fn directories_keep_their_mode_and_owner() {
    let (_d, b) = published();
    let cat = b.path("g1").join("cat");
    fs::set_permissions(&cat, fs::Permissions::from_mode(0o2775)).unwrap();
    std::os::unix::fs::chown(&cat, Some(250), Some(250)).unwrap_or(());
    let want = fs::metadata(&cat).unwrap();
    b.create("g2", None).unwrap();
    let got = fs::metadata(b.path("g2").join("cat")).unwrap();
    assert_eq!(
        (got.mode(), got.uid(), got.gid()),
        (want.mode(), want.uid(), want.gid())
    );
}

#[test]
fn threads_link_every_file_of_a_wide_tree_and_stop_at_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for c in 0..20 {
        for p in 0..10 {
            write(&src.join(format!("c{c}/p{p}/p{p}-1-1.gpkg.tar")), "x");
        }
    }
    let dest = dir.path().join("dest");
    link_tree(&src, &dest, &[], 4).unwrap();
    for c in 0..20 {
        for p in 0..10 {
            let rel = format!("c{c}/p{p}/p{p}-1-1.gpkg.tar");
            let (a, b) = (
                fs::metadata(src.join(&rel)).unwrap(),
                fs::metadata(dest.join(&rel)).unwrap(),
            );
            assert_eq!(a.ino(), b.ino(), "{rel}");
        }
    }
    // Into a directory that is there already: one error, nothing hangs.
    let e = link_tree(&src, &dest, &[], 4).unwrap_err();
    assert!(e.to_string().starts_with("creating "), "{e}");
}
