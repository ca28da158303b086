//! The runner as root: real overlays, namespaces and chroots. First the sandbox
//! helper alone (`portroot internal sandbox SPEC`) against a rootfs directory
//! built here from the host's bash and busybox, then `portroot run`, `shell`,
//! `ps` and `gc` end to end.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portroot_runner::conf::{ChrootConf, RepoConf};
use portroot_runner::plan::{Bind, ChrootLayout};
use portroot_runner::sandbox::{self, Network, SandboxSpec};

use crate::util;

/// A minimal but real root filesystem: the host's bash and env with their
/// libraries, and busybox for the usual tools.
pub fn make_rootfs(root: &Path) {
    for d in ["bin", "usr/bin", "etc", "root", "tmp", "var/tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    copy_in(root, Path::new("/usr/bin/bash"), Path::new("bin/bash"));
    copy_in(root, Path::new("/usr/bin/env"), Path::new("usr/bin/env"));
    copy_in(
        root,
        Path::new("/usr/bin/busybox"),
        Path::new("bin/busybox"),
    );
    for applet in [
        "cat", "ls", "hostname", "mkdir", "sh", "id", "touch", "grep", "wc", "sleep", "readlink",
        "stat", "head", "sort", "tr", "sed",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for bin in ["/usr/bin/bash", "/usr/bin/env"] {
        let out = Command::new("ldd").arg(bin).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from);
            if let Some(lib) = lib {
                let rel = lib.strip_prefix("/").unwrap().to_owned();
                if !root.join(&rel).exists() {
                    copy_in(root, &lib, &rel);
                }
            }
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/bash\nportage:x:250:250::/var/tmp/portage:/bin/false\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("etc/portage")).unwrap();
    fs::write(
        root.join("etc/portage/make.conf"),
        "COMMON_FLAGS=\"-O2 -pipe\"\n",
    )
    .unwrap();
}

fn copy_in(root: &Path, src: &Path, rel: &Path) {
    let dst = root.join(rel);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
}

/// Every entry below `root` with type, mode, owner and a content hash, for
/// "unchanged" checks.
pub fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let mut h = std::hash::DefaultHasher::new();
            if md.is_file() {
                fs::read(&path).unwrap().hash(&mut h);
            } else if md.is_symlink() {
                fs::read_link(&path).unwrap().hash(&mut h);
            } else if md.is_dir() {
                stack.push(path.clone());
            }
            let desc = format!(
                "{:o} {}:{} {} {:x} {}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.len(),
                h.finish(),
                md.mtime()
            );
            out.insert(path.strip_prefix(root).unwrap().to_owned(), desc);
        }
    }
    out
}

/// The directories of one sandbox-helper test.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    spec: SandboxSpec,
}

impl Sandbox {
    fn new(script: &str) -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        make_rootfs(&base.join("rootfs"));
        for d in [
            "upper",
            "work",
            "root",
            "tree",
            "extra",
            "distfiles",
            "binpkgs",
        ] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::create_dir_all(base.join("tree/metadata")).unwrap();
        fs::write(
            base.join("tree/metadata/timestamp.x"),
            "1787359500 tag-one\n",
        )
        .unwrap();
        fs::write(base.join("extra/README"), "extra repo\n").unwrap();
        let spec = SandboxSpec {
            hostname: "job-a".into(),
            layout: ChrootLayout {
                layers: vec![base.join("rootfs")],
                upper: base.join("upper"),
                work: base.join("work"),
                root: base.join("root"),
                binds: vec![
                    Bind {
                        source: base.join("tree"),
                        target: "/var/db/repos/gentoo".into(),
                        writable: false,
                    },
                    Bind {
                        source: base.join("extra"),
                        target: "/var/db/repos/extra".into(),
                        writable: false,
                    },
                    Bind {
                        source: base.join("distfiles"),
                        target: "/var/cache/distfiles".into(),
                        writable: true,
                    },
                    Bind {
                        source: base.join("binpkgs"),
                        target: "/var/cache/binpkgs".into(),
                        writable: true,
                    },
                ],
            },
            conf: ChrootConf {
                repos: vec![
                    RepoConf {
                        name: "gentoo".into(),
                        location: "/var/db/repos/gentoo".into(),
                    },
                    RepoConf {
                        name: "extra".into(),
                        location: "/var/db/repos/extra".into(),
                    },
                ],
                distdir: "/var/cache/distfiles".into(),
                pkgdir: "/var/cache/binpkgs".into(),
                local_mirror: Some("http://mirror.invalid/gentoo".into()),
                resolv_conf: Some(b"nameserver 192.0.2.53\n".to_vec()),
            },
            network: Network::Host,
            command: sandbox::Command::Script(script.into()),
            term: Some("dumb".into()),
        };
        Sandbox {
            _tmp: tmp,
            base,
            spec,
        }
    }

    fn run(&self) -> Output {
        let path = self.base.join("spec.json");
        self.spec.save(&path).unwrap();
        Command::new(util::bin())
            .args(["internal", "sandbox"])
            .arg(&path)
            .env("PORTROOT_TEST_LEAK", "host-secret")
            .output()
            .unwrap()
    }
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sandbox failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sandbox_runs_script_in_isolated_chroot() {
    if !util::require_root() {
        return;
    }
    let sb = Sandbox::new(
        "echo pid=$$; echo host=$(hostname); echo env=$(/usr/bin/env | sort | tr '\\n' ' ');\
         cat /var/db/repos/gentoo/metadata/timestamp.x /var/db/repos/extra/README;\
         cat /etc/portage/make.conf /etc/portage/repos.conf/gentoo.conf /etc/portage/mirrors /etc/resolv.conf;\
         echo pkg > /var/cache/binpkgs/job-a.gpkg.tar; echo mine > /root/file;\
         if touch /var/db/repos/gentoo/x 2>/dev/null; then echo tree-writable; fi;\
         grep -E ' /(sys|var/db/repos/gentoo) ' /proc/self/mountinfo | sed 's/^/mnt: /';\
         echo devnull >/dev/null && echo dev-ok;\
         echo init=$(cat /proc/1/cmdline | tr '\\0' ' ');\
         ls /proc | grep -c '^[0-9]'",
    );
    let before_rootfs = listing(&sb.base.join("rootfs"));
    let before_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let out = stdout(&sb.run());

    assert!(
        out.contains("pid=2\n"),
        "the shell is PID 2 under our init: {out}"
    );
    assert!(out.contains("host=job-a\n"), "{out}");
    // Nothing from the host environment: only what bash itself sets.
    assert!(!out.contains("host-secret"), "{out}");
    let env_line = out.lines().find(|l| l.starts_with("env=")).unwrap();
    assert!(
        env_line.contains("HOME=/root") && env_line.contains("TERM=dumb"),
        "{env_line}"
    );
    assert!(!env_line.contains("PORTROOT"), "{env_line}");
    assert!(out.contains("1787359500 tag-one\nextra repo\n"), "{out}");
    assert!(out.contains("COMMON_FLAGS=\"-O2 -pipe\"\n"), "{out}");
    assert!(
        out.contains(
            "FEATURES=\"${FEATURES} buildpkg cgroup ipc-sandbox network-sandbox parallel-fetch\""
        ),
        "{out}"
    );
    assert!(out.contains("PKGDIR=\"/var/cache/binpkgs\""), "{out}");
    assert!(out.contains("main-repo = gentoo"), "{out}");
    assert!(
        out.contains("[extra]\nlocation = /var/db/repos/extra\nsync-type = git"),
        "{out}"
    );
    assert!(
        out.contains("local http://mirror.invalid/gentoo\n"),
        "{out}"
    );
    assert!(out.contains("nameserver 192.0.2.53\n"), "{out}");
    assert!(!out.contains("tree-writable"), "{out}");
    for mnt in [" /sys ", " /var/db/repos/gentoo "] {
        let line = out
            .lines()
            .find(|l| l.starts_with("mnt: ") && l.contains(mnt));
        let line = line.unwrap_or_else(|| panic!("{mnt} not mounted: {out}"));
        let opts = line.split(' ').nth(6).unwrap();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "{mnt} not read-only: {line}"
        );
    }
    assert!(out.contains("dev-ok\n"), "{out}");
    assert!(
        out.contains("init=portroot internal sandbox") || out.contains("init=/"),
        "{out}"
    );
    // init, bash, ls, grep (and maybe the command substitution): a handful of
    // processes, not the host's hundreds.
    let nprocs: usize = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(nprocs < 10, "{nprocs} processes visible: {out}");

    assert_eq!(
        fs::read_to_string(sb.base.join("binpkgs/job-a.gpkg.tar")).unwrap(),
        "pkg\n"
    );
    assert_eq!(
        fs::read_to_string(sb.base.join("upper/root/file")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        listing(&sb.base.join("rootfs")),
        before_rootfs,
        "stage rootfs changed"
    );
    assert!(fs::read_dir(sb.base.join("tree")).unwrap().count() == 1);
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo").unwrap(),
        before_mounts
    );
}

#[test]
fn sandbox_network_none_has_only_loopback() {
    if !util::require_root() {
        return;
    }
    let mut sb = Sandbox::new("cat /proc/net/dev; cat /proc/net/route");
    sb.spec.network = Network::None;
    let out = stdout(&sb.run());
    let ifaces: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|n| !n.contains('|'))
        .collect();
    assert_eq!(ifaces, ["lo"], "{out}");
    // /proc/net/route lists no route at all (only its header line).
    assert_eq!(
        out.lines().filter(|l| l.starts_with("Iface")).count(),
        1,
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("eth") || l.starts_with("en")),
        "{out}"
    );
}

#[test]
fn sandbox_reports_exit_status_and_setup_errors() {
    if !util::require_root() {
        return;
    }
    let sb = Sandbox::new("exit 7");
    assert_eq!(sb.run().status.code(), Some(7));

    let mut sb = Sandbox::new("true");
    sb.spec.layout.binds[0].source = sb.base.join("missing-tree");
    let out = sb.run();
    assert_eq!(out.status.code(), Some(sandbox::SETUP_FAILED));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "binding {}",
            sb.base.join("root/var/db/repos/gentoo").display()
        )),
        "{err}"
    );
}

#[test]
fn sandbox_binds_never_follow_symlinks_out_of_the_chroot() {
    if !util::require_root() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let sb = Sandbox::new("cat /var/db/repos/gentoo/metadata/timestamp.x");
    // A hostile stage: /var/db points at a host directory.
    fs::create_dir_all(sb.base.join("rootfs/var")).unwrap();
    std::os::unix::fs::symlink(outside.path(), sb.base.join("rootfs/var/db")).unwrap();
    // The same path exists inside the stage: that is where the link must lead.
    let inside = sb
        .base
        .join("rootfs")
        .join(outside.path().strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();
    let before = util::mountpoints();
    let out = stdout(&sb.run());
    assert!(out.contains("tag-one"), "{out}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "bind escaped the chroot"
    );
    assert_eq!(util::mountpoints(), before);
    // The mount point was created through the overlay, in the job's upper dir.
    let upper = sb
        .base
        .join("upper")
        .join(outside.path().strip_prefix("/").unwrap());
    assert!(upper.join("repos/gentoo").is_dir());
}
