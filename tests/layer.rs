//! `portroot layer ...`, `run --layer` and `stage export` as root: real jobs
//! in real overlay chroots over the fixture stage, layers stacked as overlayfs
//! lower directories, exports read back with `stage add`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portroot::fixture::stage as fixture;

use crate::runner::{listing, RunStore};
use crate::util;

const TAG: &str = "2026-08-20";

/// `portroot layer create NAME --stage test --tag TAG [--layer L]... -- SCRIPT`.
pub(crate) fn create(rs: &RunStore, name: &str, layers: &[&str], script: &str) -> Command {
    let mut c = util::portroot(&rs.store());
    c.args(["layer", "create", name, "--stage", "test", "--tag", TAG]);
    for l in layers {
        c.args(["--layer", l]);
    }
    c.arg("--").arg(script);
    c
}

/// `portroot run --stage test --tag TAG [--layer L]... -- SCRIPT`.
fn run_over(rs: &RunStore, layers: &[&str], script: &str) -> Command {
    let mut c = rs.run();
    for l in layers {
        c.args(["--layer", l]);
    }
    c.arg("--").arg(script);
    c
}

fn run_dirs(rs: &RunStore) -> Vec<PathBuf> {
    match fs::read_dir(rs.store().join("runs")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Run `cmd` (one job), assert success, return the job's log.
fn ok_log(rs: &RunStore, cmd: &mut Command) -> String {
    let before = run_dirs(rs);
    util::ok(cmd);
    let run = run_dirs(rs)
        .into_iter()
        .find(|r| !before.contains(r))
        .expect("a new run directory");
    fs::read_to_string(run.join("1/log")).unwrap()
}

pub(crate) fn layer_dir(rs: &RunStore, name: &str) -> PathBuf {
    rs.store().join("layers").join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Nothing a layer operation leaves behind: no scratch directory in `tmp/`,
/// no create lock in `layers/`, no mount.
fn assert_no_leftovers(rs: &RunStore) {
    if let Ok(rd) = fs::read_dir(rs.store().join("tmp")) {
        let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }
    if let Ok(rd) = fs::read_dir(rs.store().join("layers")) {
        let hidden: Vec<_> = rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "left in layers/: {hidden:?}");
    }
    util::assert_no_mounts_under(rs.tmp.path());
}

/// Non-directory entries below `dir`, relative.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

pub(crate) const BASE_SCRIPT: &str = "set -e
echo added > /etc/added
echo 'extra:x:1000:1000::/home/extra:/bin/sh' >> /etc/passwd
rm /var/lib/portage/world
rm -rf /usr/lib/fixture
mkdir /usr/lib/fixture
echo fresh > /usr/lib/fixture/new";

#[test]
fn layer_changes_show_in_runs_and_nothing_else_does() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let stage_before = listing(&rs.rootfs());
    util::ok(&mut create(&rs, "base", &[], BASE_SCRIPT));

    // The upper directory holds exactly the job's changes: an added file, a
    // changed file, a whiteout for the deleted file, an opaque directory for
    // the replaced one; none of the runner's own files or mount points.
    let upper = layer_dir(&rs, "base").join("upper");
    assert_eq!(
        files_below(&upper),
        [
            "etc/added",
            "etc/passwd",
            "usr/lib/fixture/new",
            "var/lib/portage/world"
        ]
    );
    let wh = fs::symlink_metadata(upper.join("var/lib/portage/world")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(upper.join("usr/lib/fixture"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(layer_dir(&rs, "base").join("layer.json")).unwrap())
            .unwrap();
    assert_eq!(json["name"], "base");
    assert_eq!(json["stage"], "test");
    assert_eq!(
        json["stage_digest"].as_str().unwrap(),
        rs.rootfs()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(json["parents"], serde_json::json!([]));
    assert_eq!(json["trees"][0]["reference"], TAG);
    assert_eq!(json["trees"][0]["commit"].as_str().unwrap().len(), 40);
    assert_eq!(json["command"], BASE_SCRIPT);
    assert_eq!(json["exit_status"], 0);
    assert_eq!(json["files"], 11, "{json}"); // 4 files and 7 directories
    assert_no_leftovers(&rs);

    // A run over the layer sees exactly those changes, and portroot's own
    // make.conf lines once (not once per layer).
    let layer_before = listing(&layer_dir(&rs, "base"));
    let log = ok_log(
        &rs,
        &mut run_over(
            &rs,
            &["base"],
            "cat /etc/added; tail -n 1 /etc/passwd; test -e /var/lib/portage/world || echo world-gone;\
             ls /usr/lib/fixture; grep -c 'added by portroot' /etc/portage/make.conf;\
             echo scribble > /etc/added; rm /usr/lib/fixture/new",
        ),
    );
    assert_eq!(
        log,
        "added\nextra:x:1000:1000::/home/extra:/bin/sh\nworld-gone\nnew\n1\n"
    );
    // The run wrote into its own upper directory only.
    assert_eq!(listing(&layer_dir(&rs, "base")), layer_before);
    assert_eq!(listing(&rs.rootfs()), stage_before);

    let list = util::ok(util::portroot(&rs.store()).args(["layer", "list"]));
    assert!(list.starts_with("NAME"), "{list}");
    assert!(list.contains("base") && list.contains("stage "), "{list}");
    let listed: serde_json::Value = serde_json::from_str(&util::ok(
        util::portroot(&rs.store()).args(["layer", "list", "--json"]),
    ))
    .unwrap();
    assert_eq!(listed, serde_json::json!([json]));
    assert_no_leftovers(&rs);
}

#[test]
fn stacked_layers_need_their_chain() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    util::ok(&mut create(&rs, "one", &[], "echo 1 > /etc/one"));
    util::ok(&mut create(
        &rs,
        "two",
        &["one"],
        "cat /etc/one > /etc/two; rm /etc/one",
    ));
    let log = ok_log(
        &rs,
        &mut run_over(
            &rs,
            &["one", "two"],
            "cat /etc/two; test -e /etc/one || echo one-gone",
        ),
    );
    assert_eq!(log, "1\none-gone\n");
    // shell stacks them the same way.
    let mut shell = util::portroot(&rs.store());
    shell
        .args(["shell", "--stage", "test", "--tag", TAG, "--layer", "one"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = shell.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /etc/one\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(layer_dir(&rs, "two").join("layer.json")).unwrap())
            .unwrap();
    assert_eq!(json["parents"][0]["name"], "one");

    // A second stage to use the layers over by mistake.
    let other = StageTarballGz::add(&rs, "other");
    let store_before = listing(&rs.store());
    let ran = "touch /var/cache/binpkgs/ran".to_owned();
    for (layers, stage, want) in [
        (
            &["two", "one"][..],
            "test",
            "layer two cannot be used here: it was built over one but is used over the stage alone",
        ),
        (&["two"][..], "test", "layer two cannot be used here"),
        (
            &["one"][..],
            other.as_str(),
            "layer one cannot be used here: it was built over stage",
        ),
        (&["nope"][..], "test", "no layer nope"),
        (&["one", "one"][..], "test", "layer one is given twice"),
    ] {
        let mut c = util::portroot(&rs.store());
        c.args(["run", "--stage", stage, "--tag", TAG]);
        for l in layers {
            c.args(["--layer", l]);
        }
        let err = util::fails(c.arg("--").arg(&ran), 1);
        assert!(err.contains(want), "{layers:?} over {stage}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // Creating a layer over a bad chain or with a taken name runs nothing either.
    let err = util::fails(&mut create(&rs, "three", &["two"], &ran), 1);
    assert!(err.contains("layer two cannot be used here"), "{err}");
    let err = util::fails(&mut create(&rs, "one", &[], &ran), 1);
    assert!(err.contains("layer one already exists"), "{err}");
    // PKGDIR is a run's own generation: the newest is a layer's.
    assert!(!util::pkgdir(&rs.store()).join("ran").exists());
    assert_eq!(listing(&rs.store()), store_before);

    // rm refuses a layer another one is built over, then works bottom-up.
    let err = util::fails(util::portroot(&rs.store()).args(["layer", "rm", "one"]), 1);
    assert!(
        err.contains("layer one is busy: layer two is built over it"),
        "{err}"
    );
    util::ok(util::portroot(&rs.store()).args(["layer", "rm", "two"]));
    util::ok(util::portroot(&rs.store()).args(["layer", "rm", "one"]));
    assert!(!layer_dir(&rs, "one").exists());
    // A re-created parent is a different layer.
    util::ok(&mut create(&rs, "one", &[], "echo 1 > /etc/one"));
    util::ok(&mut create(&rs, "two", &["one"], "true"));
    util::ok(util::portroot(&rs.store()).args(["layer", "rm", "two"]));
    assert_no_leftovers(&rs);
}

/// A second stage: the fixture gzip-compressed (another digest).
struct StageTarballGz;

impl StageTarballGz {
    fn add(rs: &RunStore, name: &str) -> String {
        let dir = rs.tmp.path().join("gz");
        fs::create_dir_all(&dir).unwrap();
        let tarball = fixture::StageTarball::build(&dir, fixture::Compression::Gzip).unwrap();
        util::ok(
            util::portroot(&rs.store())
                .args(["-q", "stage", "add", "--name", name])
                .arg(&tarball),
        );
        name.to_owned()
    }
}

#[test]
fn failed_or_interrupted_create_leaves_no_layer() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let out = util::run(&mut create(&rs, "bad", &[], "echo x > /etc/x; exit 3"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no layer bad created"),
        "{}",
        stderr(&out)
    );
    assert!(!layer_dir(&rs, "bad").exists());
    assert_no_leftovers(&rs);

    // PKGDIR is the create's generation, the newest once it is made.
    let cookie = || util::pkgdir(&rs.store()).join("started");
    let mut child = create(
        &rs,
        "killed",
        &[],
        "echo x > /etc/x; touch /var/cache/binpkgs/started; sleep 600",
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    while !cookie().exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(child.try_wait().unwrap().is_none(), "create exited early");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    assert!(!layer_dir(&rs, "killed").exists());
    assert_no_leftovers(&rs);
    // The name is free again.
    util::ok(&mut create(&rs, "killed", &[], "true"));
    assert!(layer_dir(&rs, "killed").join("upper").is_dir());

    // What a SIGKILL while committing leaves in tmp/ goes with `gc`.
    let orphan = rs.store().join("tmp/layer-new-orphan-x1");
    fs::create_dir_all(orphan.join("upper/etc")).unwrap();
    let gc = util::run(util::portroot(&rs.store()).arg("gc"));
    assert!(gc.status.success());
    assert!(stderr(&gc).contains(", 1 layer and "), "{}", stderr(&gc));
    assert!(!orphan.exists());
    assert_no_leftovers(&rs);
}

#[test]
fn a_used_layer_is_shared_and_cannot_be_removed() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    util::ok(&mut create(&rs, "base", &[], "echo shared > /etc/shared"));
    let layer_before = listing(&layer_dir(&rs, "base"));

    // Two runs over the layer at once, each waiting (bounded) for the other
    // to be running, writing over the layer's file in their own chroots;
    // they meet in one PKGDIR shared by both (--binpkgs), not generations.
    let pkgs = rs.store().join("shared-binpkgs");
    let script = |me: &str, other: &str| {
        format!(
            "touch /var/cache/binpkgs/{me}; i=0;\
             while [ ! -e /var/cache/binpkgs/{other} ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done;\
             test -e /var/cache/binpkgs/{other} && cat /etc/shared && echo {me} > /etc/shared && cat /etc/shared;\
             while [ ! -e /var/cache/binpkgs/done ] && [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); done"
        )
    };
    let spawn = |me: &str, other: &str| {
        rs.run()
            .args(["--layer", "base", "--binpkgs"])
            .arg(&pkgs)
            .arg("--")
            .arg(script(me, other))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("a", "b");
    let b = spawn("b", "a");
    while !(pkgs.join("a").exists() && pkgs.join("b").exists()) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = util::fails(util::portroot(&rs.store()).args(["layer", "rm", "base"]), 1);
    assert!(err.contains("layer base is busy: run "), "{err}");
    fs::write(pkgs.join("done"), "").unwrap();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut logs: Vec<String> = run_dirs(&rs)
        .into_iter()
        .filter(|r| r.join("1/log").is_file())
        .map(|r| fs::read_to_string(r.join("1/log")).unwrap())
        .collect();
    logs.sort();
    assert_eq!(logs, ["shared\na\n", "shared\nb\n"]);
    assert_eq!(listing(&layer_dir(&rs, "base")), layer_before);

    // A finished run that kept its chroot over the layer holds it too.
    util::ok(rs.run().args(["--keep", "--layer", "base", "--", "true"]));
    let err = util::fails(util::portroot(&rs.store()).args(["layer", "rm", "base"]), 1);
    assert!(err.contains("layer base is busy: run "), "{err}");
    // And so does the stage below it.
    let err = util::fails(util::portroot(&rs.store()).args(["stage", "rm", "test"]), 1);
    assert!(err.contains("stage test is busy: run "), "{err}");
    util::ok(util::portroot(&rs.store()).args(["gc", "--all"]));
    util::ok(util::portroot(&rs.store()).args(["layer", "rm", "base"]));
    assert!(!layer_dir(&rs, "base").exists());
    assert_no_leftovers(&rs);
}

/// Every entry below `root` (the root itself as `.`): type, mode, owner,
/// mtime, size, content or target hash, device number, xattrs (overlayfs's
/// own left out) and, for multiply linked files, the first name of the link
/// group.
pub(crate) fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut paths = vec![PathBuf::from(".")];
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p.strip_prefix(root).unwrap().to_owned());
        }
    }
    paths.sort();
    // Names per inode: a link group is what the tree shows, not st_nlink
    // (a lower file whose other name was copied up still counts two).
    let mut members: HashMap<(u64, u64), usize> = HashMap::new();
    for rel in &paths {
        let md = fs::symlink_metadata(root.join(rel)).unwrap();
        if md.is_file() {
            *members.entry((md.dev(), md.ino())).or_default() += 1;
        }
    }
    for rel in paths {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let mut h = std::hash::DefaultHasher::new();
        if md.is_file() {
            fs::read(&p).unwrap().hash(&mut h);
        } else if md.is_symlink() {
            fs::read_link(&p).unwrap().hash(&mut h);
        }
        let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
            .unwrap()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("trusted.overlay."))
            .map(|n| {
                let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                (n, v)
            })
            .collect();
        xattrs.sort();
        let group = if md.is_file() && members[&(md.dev(), md.ino())] > 1 {
            groups
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .display()
                .to_string()
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!(
                "{:o} {}:{} mtime={} size={} {:x} rdev={} {xattrs:?} link={group}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime(),
                if md.is_dir() { 0 } else { md.len() },
                h.finish(),
                md.rdev()
            ),
        );
    }
    out
}

/// A read-only overlay of `lowers` (top first) on `at`, unmounted on drop.
struct View(PathBuf);

impl View {
    fn mount(lowers: &[PathBuf], at: &Path) -> View {
        fs::create_dir_all(at).unwrap();
        let opts = format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|l| l.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(":")
        );
        nix::mount::mount(
            Some("overlay"),
            at,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .unwrap();
        View(at.to_owned())
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

pub(crate) fn assert_same_tree(got: &BTreeMap<PathBuf, String>, want: &BTreeMap<PathBuf, String>) {
    let diff: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("-{} {v}", k.display()))
        .chain(
            got.iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .map(|(k, v)| format!("+{} {v}", k.display())),
        )
        .collect();
    assert!(diff.is_empty(), "trees differ:\n{}", diff.join("\n"));
}

#[test]
fn export_of_stage_and_layers_reads_back_identically() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    // `rs.rootfs()` picks any stage; there will be three.
    let stage_root = rs.rootfs();
    // Copy-ups keep xattrs (the capability, the user.* one) under new modes
    // and owners; a hardlink made in the layer; a deletion; a new subtree.
    util::ok(&mut create(
        &rs,
        "one",
        &[],
        &format!(
            "set -e; chmod 4711 /{cap}; chown 250:250 /etc/profile;\
             ln /{a} /usr/lib/fixture/linked-c; rm /var/lib/portage/world; echo hi > /root/hello",
            cap = fixture::CAPABILITY_PATH,
            a = fixture::HARDLINK_TARGET
        ),
    ));
    util::ok(&mut create(
        &rs,
        "two",
        &["one"],
        "set -e; rm -rf /var/tmp/portage; mkdir -p /var/tmp/portage/sub; echo two > /var/tmp/portage/sub/f;\
         ln -s ../../etc/passwd /var/tmp/portage/sub/link",
    ));
    let out_file = rs.tmp.path().join("stack.tar.xz");
    let printed = util::ok(
        util::portroot(&rs.store())
            .args([
                "stage", "export", "--stage", "test", "--layer", "one", "--layer", "two",
            ])
            .arg(&out_file),
    );
    assert!(printed.contains("exported test to"), "{printed}");

    assert_no_leftovers(&rs);
    util::ok(
        util::portroot(&rs.store())
            .args(["-q", "stage", "add", "--name", "re"])
            .arg(&out_file),
    );
    let re =
        portroot_runner::stage::StageStore::new(rs.store().join("stages"), rs.store().join("tmp"))
            .resolve("re")
            .unwrap()
            .rootfs;
    let got = tree(&re);
    let want = {
        let lowers = [
            layer_dir(&rs, "two").join("upper"),
            layer_dir(&rs, "one").join("upper"),
            stage_root.clone(),
        ];
        let _view = View::mount(&lowers, &rs.tmp.path().join("view"));
        tree(&rs.tmp.path().join("view"))
    };
    util::assert_no_mounts_under(rs.tmp.path());
    assert_same_tree(&got, &want);

    // The properties the comparison covers, spelled out once.
    let ping = re.join(fixture::CAPABILITY_PATH);
    assert_eq!(fs::symlink_metadata(&ping).unwrap().mode() & 0o7777, 0o4711);
    assert_eq!(
        xattr::get(&ping, "security.capability").unwrap().unwrap(),
        fixture::CAP_NET_RAW_EP
    );
    let profile = fs::symlink_metadata(re.join("etc/profile")).unwrap();
    assert_eq!((profile.uid(), profile.gid()), (250, 250));
    assert!(xattr::get(re.join("etc/profile"), "user.portroot.fixture")
        .unwrap()
        .is_some());
    let a = fs::metadata(re.join(fixture::HARDLINK_TARGET)).unwrap();
    let c = fs::metadata(re.join("usr/lib/fixture/linked-c")).unwrap();
    assert_eq!(a.ino(), c.ino());
    assert!(!re.join(fixture::PORTAGE_FILE_PATH).exists());
    assert!(fs::symlink_metadata(re.join("var/tmp/portage/sub/link"))
        .unwrap()
        .is_symlink());
    assert!(fs::symlink_metadata(re.join(fixture::CHAR_DEVICE_PATH))
        .unwrap()
        .file_type()
        .is_char_device());

    // The stage alone exports to itself too (no overlay needed).
    let plain = rs.tmp.path().join("plain.tar.xz");
    util::ok(
        util::portroot(&rs.store())
            .args(["-q", "stage", "export", "--stage", "test"])
            .arg(&plain),
    );
    util::ok(
        util::portroot(&rs.store())
            .args(["-q", "stage", "add", "--name", "plain"])
            .arg(&plain),
    );
    let plain_root =
        portroot_runner::stage::StageStore::new(rs.store().join("stages"), rs.store().join("tmp"))
            .resolve("plain")
            .unwrap()
            .rootfs;
    assert_same_tree(&tree(&plain_root), &tree(&stage_root));

    // Bad input: one line, nothing written.
    let bad = rs.tmp.path().join("bad.tar.xz");
    let err = util::fails(
        util::portroot(&rs.store())
            .args(["stage", "export", "--stage", "test", "--layer", "two"])
            .arg(&bad),
        1,
    );
    assert!(err.contains("layer two cannot be used here"), "{err}");
    assert!(!bad.exists());
    assert_no_leftovers(&rs);
}
