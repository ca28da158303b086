//! The seed's whole workflow through the real binary, as an operator would type
//! it: import two dated snapshots, browse every tag side by side, add a stage,
//! build a layer over it, run 8 jobs in parallel over the layer at the older
//! tag, collect their binary packages, `gc`, and check that no mount, process
//! or temporary directory of ours is left.

use std::fs;
use std::path::{Path, PathBuf};

use portroot::fixture::portage::{pack_snapshot, PortageTree};
use portroot::fixture::stage::StageTarball;
use portroot_runner::archive::Compression;

use crate::util;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn the_seed_workflow_end_to_end() {
    if !util::require_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let input = tmp.path().join("input");
    fs::create_dir_all(&input).unwrap();
    let pr = || util::portroot(&store);

    // Two dated snapshots, as the mirrors publish them, with their md5sums.
    let mut tree = PortageTree::small(4242);
    let mut tarballs: Vec<PathBuf> = Vec::new();
    for _ in 0..2 {
        let dir = input.join(format!("tree-{}", tree.day));
        tree.write_tree(&dir).unwrap();
        let tarball = pack_snapshot(&dir, &tree.snapshot_stem(), Compression::Xz, &input).unwrap();
        portroot::fixture::portage::write_md5sum(&tarball).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        tarballs.push(tarball);
        tree = tree.next_day();
    }

    // 1. Import: one commit and tag per date.
    for tarball in &tarballs {
        let out = util::ok(pr().args(["snapshot", "import"]).arg(tarball));
        assert!(out.starts_with("imported "), "{out}");
    }
    let list = util::ok(pr().args(["snapshot", "list"]));
    let tags: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(tags.len(), 2, "{list}");
    let (old, new) = (tags[0].clone(), tags[1].clone());
    assert!(old < new, "{list}");
    let diff = util::ok(pr().args(["snapshot", "diff", "--stat", &old, &new]));
    assert!(!diff.trim().is_empty());

    // 2. Every tag side by side; browse it, `latest` points at the newest.
    let mnt = tmp.path().join("all");
    fs::create_dir(&mnt).unwrap();
    util::ok(pr().arg("mount").arg("--all").arg(&mnt));
    let browsed = || {
        let names = entries(&mnt);
        assert_eq!(names, vec![old.clone(), new.clone(), "latest".to_owned()]);
        assert_eq!(
            fs::read_link(mnt.join("latest")).unwrap(),
            PathBuf::from(&new)
        );
        for tag in [&old, &new] {
            let stamp = fs::read_to_string(mnt.join(tag).join("metadata/timestamp.chk")).unwrap();
            assert!(!stamp.trim().is_empty());
            assert!(!entries(&mnt.join(tag).join("profiles")).is_empty());
        }
        let shown = util::ok(
            std::process::Command::new("git")
                .arg("-C")
                .arg(store.join("repos/gentoo.git"))
                .args(["show", &format!("{old}:metadata/timestamp.chk")]),
        );
        assert_eq!(
            fs::read_to_string(mnt.join(&old).join("metadata/timestamp.chk")).unwrap(),
            shown
        );
    };
    let result = std::panic::catch_unwind(browsed);
    util::ok(pr().arg("umount").arg(&mnt));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }

    // 3. The stage, unpacked once.
    let stage = StageTarball::build(&input, Compression::Xz).unwrap();
    util::ok(pr().args(["stage", "add", "--name", "base"]).arg(&stage));
    let rootfs_before = crate::runner::listing(&stage_rootfs(&store));

    // 4. A layer: a software stack's own files over the stage.
    util::ok(pr().args([
        "layer",
        "create",
        "stack",
        "--stage",
        "base",
        "--tag",
        &old,
        "--",
        "set -e; mkdir -p /opt/stack; echo 'stack 1.0' > /opt/stack/VERSION; \
         echo built-with-stack > /etc/stack.conf",
    ]));
    let layers = util::ok(pr().args(["layer", "list"]));
    assert!(layers.contains("stack"), "{layers}");

    // 5. Eight jobs in parallel over the layer at the older tag, each reading
    //    the tree and the layer, each writing a binary package into PKGDIR
    //    (the run's binhost generation, published when all succeeded).
    let script = "set -e; tree=/var/db/repos/gentoo; \
        test \"$(< /opt/stack/VERSION)\" = 'stack 1.0'; \
        stamp=$(< $tree/metadata/timestamp.chk); \
        mkdir -p /var/cache/binpkgs/e2e; \
        echo \"$stamp $(< /opt/stack/VERSION)\" > /var/cache/binpkgs/e2e/pkg-$HOSTNAME-1.0.gpkg.tar";
    util::ok(pr().args([
        "run",
        "--stage",
        "base",
        "--layer",
        "stack",
        "--tag",
        &old,
        "--jobs",
        "8",
        "--repeat",
        "8",
        "--publish",
        "--",
        script,
    ]));
    // The run wrote a generation of the store's binhost and published it:
    // what clients read.
    let pkgdir = store.join("binpkgs/current/e2e");
    let packages = entries(&pkgdir);
    assert_eq!(packages.len(), 8, "{packages:?}");
    let old_stamp = util::ok(
        std::process::Command::new("git")
            .arg("-C")
            .arg(store.join("repos/gentoo.git"))
            .args(["show", &format!("{old}:metadata/timestamp.chk")]),
    );
    for p in &packages {
        let body = fs::read_to_string(pkgdir.join(p)).unwrap();
        assert_eq!(body, format!("{} stack 1.0\n", old_stamp.trim()), "{p}");
    }

    // The stage was never written.
    assert_eq!(crate::runner::listing(&stage_rootfs(&store)), rootfs_before);

    // 6. gc removes the finished runs; nothing of ours is left anywhere.
    util::ok(pr().args(["gc", "--all"]));
    assert!(
        entries(&store.join("runs")).is_empty(),
        "{:?}",
        entries(&store.join("runs"))
    );
    assert!(
        entries(&store.join("tmp"))
            .iter()
            .all(|n| n.ends_with(".lock")),
        "{:?}",
        entries(&store.join("tmp"))
    );
    // Other tests mount concurrently: only this test's directory counts.
    util::assert_no_mounts_under(tmp.path());
    let procs = util::processes_mentioning(&store.to_string_lossy());
    assert!(procs.is_empty(), "{procs:?}");
}

/// The unpacked rootfs of the store's only stage.
fn stage_rootfs(store: &Path) -> PathBuf {
    let stages = store.join("stages");
    let digests: Vec<String> = entries(&stages)
        .into_iter()
        .filter(|n| n.len() == 64)
        .collect();
    assert_eq!(digests.len(), 1, "{digests:?}");
    stages.join(&digests[0]).join("rootfs")
}
