//! `portroot layer export` and `layer add` as root: a layer written as one
//! file and added into a second store by its sha256 is the same tree there
//! (whiteouts and opaque directories included), under the same name, id and
//! parents; a wrong digest or a missing parent leaves nothing.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::layer::{assert_same_tree, create, layer_dir, tree, BASE_SCRIPT};
use crate::runner::RunStore;
use crate::util;

/// `layer export NAME -o FILE` (quiet): the printed sha256.
fn export(rs: &RunStore, name: &str, file: &Path) -> String {
    let out = util::ok(
        util::portroot(&rs.store())
            .args(["-q", "layer", "export", name, "-o"])
            .arg(file),
    );
    let digest = out.trim().to_owned();
    assert_eq!(digest.len(), 64, "{out}");
    digest
}

/// `layer add FILE --sha256 HEX`.
fn add(rs: &RunStore, file: &Path, digest: &str) -> std::process::Command {
    let mut c = util::portroot(&rs.store());
    c.args(["layer", "add"])
        .arg(file)
        .args(["--sha256", digest]);
    c
}

/// Nothing in `layers/` but `names`, nothing left in `tmp/`.
fn assert_layers(rs: &RunStore, names: &[&str]) {
    let mut have: Vec<String> = fs::read_dir(rs.store().join("layers"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    have.sort();
    assert_eq!(have, names);
    if let Ok(rd) = fs::read_dir(rs.store().join("tmp")) {
        let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }
}

#[test]
fn layer_export_adds_back_identically_by_digest_and_refuses_the_rest() {
    if !util::require_root() {
        return;
    }
    let one = RunStore::new();
    util::ok(&mut create(&one, "base", &[], BASE_SCRIPT));
    util::ok(&mut create(&one, "top", &["base"], "echo top > /etc/top"));
    let (base_file, top_file) = (
        one.tmp.path().join("base.layer.tar.xz"),
        one.tmp.path().join("top.layer.tar.xz"),
    );
    let base_digest = export(&one, "base", &base_file);
    let top_digest = export(&one, "top", &top_file);
    // Two exports of one layer are the same file.
    let again = one.tmp.path().join("again.tar.xz");
    assert_eq!(export(&one, "base", &again), base_digest);

    let two = RunStore::new();
    // A missing parent: refused in one line, naming it; nothing kept.
    let err = util::fails(&mut add(&two, &top_file, &top_digest), 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("needs its parent layer base"), "{err}");
    // A wrong digest: nothing kept.
    let wrong = "0".repeat(64);
    let err = util::fails(&mut add(&two, &base_file, &wrong), 1);
    assert!(err.contains("expected 0000"), "{err}");
    assert_layers(&two, &[]);

    let out = util::ok(&mut add(&two, &base_file, &base_digest));
    assert!(out.contains("added layer base"), "{out}");
    util::ok(&mut add(&two, &top_file, &top_digest));
    let out = util::ok(&mut add(&two, &top_file, &top_digest));
    assert!(out.contains("already present"), "{out}");
    assert_layers(&two, &["base", "top"]);
    for name in ["base", "top"] {
        let (a, b) = (layer_dir(&one, name), layer_dir(&two, name));
        assert_eq!(
            fs::read(a.join("layer.json")).unwrap(),
            fs::read(b.join("layer.json")).unwrap()
        );
        assert_same_tree(&tree(&b.join("upper")), &tree(&a.join("upper")));
    }
    // What the comparison leaves out: the whiteout and the opaque mark.
    let upper = layer_dir(&two, "base").join("upper");
    let world = fs::symlink_metadata(upper.join("var/lib/portage/world")).unwrap();
    assert!(world.file_type().is_char_device() && world.rdev() == 0);
    assert_eq!(
        xattr::get(upper.join("usr/lib/fixture"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    // The added layers run: the file of the top one, the deletion of the base.
    util::ok(
        two.run()
            .args(["--layer", "base", "--layer", "top", "--"])
            .arg("cat /etc/top; test ! -e /var/lib/portage/world && echo gone"),
    );
    util::ok(util::portroot(&two.store()).args(["-q", "gc"]));
    util::assert_no_mounts_under(two.tmp.path());
}
