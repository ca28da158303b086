//! The runner as root: real overlays, namespaces and chroots. First the sandbox
//! helper alone (`portroot internal sandbox SPEC`) against a rootfs directory
//! built here from the host's bash and Debian's static busybox (fetched into
//! the fixture cache), then `portroot run`, `shell`,
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
    let busybox =
        portroot::fixture::deb::busybox().expect("fetching busybox into the fixture cache");
    copy_in(root, &busybox, Path::new("bin/busybox"));
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

/// `/proc/self/mountinfo`, one line per mount.
fn mountinfo() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The host's mount table is as it was: `/`, `/proc`, `/dev` and `/sys` and
/// everything below them unchanged (nothing unmounted or remounted by a slave
/// bind gone wrong), and no mount at all that mentions one of `ours` (overlay
/// options, FUSE trees, binds). Other tests of this binary mount and unmount
/// elsewhere concurrently, so the rest of the table is not compared.
fn assert_mountinfo_unchanged(before: &[String], ours: &[&Path]) {
    let after = mountinfo();
    let host = |l: &&String| {
        let mp = l.split(' ').nth(4).unwrap_or("");
        mp == "/"
            || ["/proc", "/dev", "/sys"]
                .iter()
                .any(|p| mp == *p || mp.starts_with(&format!("{p}/")))
    };
    let host_before: Vec<_> = before.iter().filter(host).collect();
    let host_after: Vec<_> = after.iter().filter(host).collect();
    assert_eq!(host_after, host_before, "host mounts changed");
    for p in ours {
        let p = p.to_string_lossy();
        let leaked: Vec<_> = after.iter().filter(|l| l.contains(p.as_ref())).collect();
        assert!(leaked.is_empty(), "mounts left mentioning {p}: {leaked:?}");
    }
}

/// Two listings are equal; on failure, show only the differing entries.
fn assert_same_listing(after: &BTreeMap<PathBuf, String>, before: &BTreeMap<PathBuf, String>) {
    let diff: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("-{} {v}", k.display()))
        .chain(
            after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .map(|(k, v)| format!("+{} {v}", k.display())),
        )
        .collect();
    assert!(diff.is_empty(), "store changed:\n{}", diff.join("\n"));
}

/// The directories of one sandbox-helper test.
pub(crate) struct Sandbox {
    _tmp: tempfile::TempDir,
    /// Holds `rootfs/`, `upper/`, `work/`, `root/`, the trees and caches.
    pub(crate) base: PathBuf,
    /// What the helper is given.
    pub(crate) spec: SandboxSpec,
}

impl Sandbox {
    pub(crate) fn new(script: &str) -> Sandbox {
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
                tmpfs: Vec::new(),
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
                local_mirror: Some("http://mirror.invalid/gentoo".parse().unwrap()),
                resolv_conf: Some(b"nameserver 192.0.2.53\n".to_vec()),
                features: Vec::new(),
                make_conf_lines: Vec::new(),
            },
            network: Network::Host,
            command: sandbox::Command::Script(script.into()),
            term: Some("dumb".into()),
            cgroup: None,
        };
        Sandbox {
            _tmp: tmp,
            base,
            spec,
        }
    }

    pub(crate) fn run(&self) -> Output {
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

pub(crate) fn stdout(out: &Output) -> String {
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
    let before_mounts = mountinfo();
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
    assert_same_listing(&listing(&sb.base.join("rootfs")), &before_rootfs);
    assert!(fs::read_dir(sb.base.join("tree")).unwrap().count() == 1);
    assert_mountinfo_unchanged(&before_mounts, &[&sb.base]);
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
fn sandbox_batch_job_has_no_terminal_but_stays_in_the_callers_session() {
    if !util::require_root() {
        return;
    }
    let sb = Sandbox::new(
        "echo job $(cat /proc/self/autogroup);\
         if (: </dev/tty) 2>/dev/null; then echo has-tty; else echo no-tty; fi",
    );
    let path = sb.base.join("spec.json");
    sb.spec.save(&path).unwrap();
    // The helper runs, as under `portroot run` from a shell, in a session
    // with a controlling terminal (a fresh pty), without leading it.
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let out = Command::new("setsid")
        .args(["--ctty", "sh", "-c"])
        .arg(format!(
            "echo caller $(cat /proc/$$/autogroup); '{}' internal sandbox '{}'; exit $?",
            util::bin().display(),
            path.display()
        ))
        .stdin(slave)
        .output()
        .unwrap();
    drop(master);
    let text = stdout(&out);
    let group = |who: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(who))
            .unwrap_or_else(|| panic!("no {who} line (no /proc/PID/autogroup?): {text}"))
            .trim()
            .to_owned()
    };
    // A new session would be a new scheduler autogroup, where the job's
    // reads of the tree mount would wait for a CPU at every FUSE reply.
    assert_eq!(group("job "), group("caller "), "{text}");
    assert!(
        text.contains("no-tty\n"),
        "the job can open the terminal: {text}"
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
    let out = stdout(&sb.run());
    assert!(out.contains("tag-one"), "{out}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "bind escaped the chroot"
    );
    // Other tests mount concurrently: only this test's directories count.
    util::assert_no_mounts_under(outside.path());
    util::assert_no_mounts_under(&sb.base);
    // The mount point was created through the overlay, in the job's upper dir.
    let upper = sb
        .base
        .join("upper")
        .join(outside.path().strip_prefix("/").unwrap());
    assert!(upper.join("repos/gentoo").is_dir());
}

// ---------------------------------------------------------------------------
// `portroot run` end to end: a stage added through the CLI, trees served by
// the fs crate from real git repositories.

/// A store with a stage `test` (the library's stage fixture: setuid,
/// capabilities, hardlinks, devices, a portage user), a `gentoo` repository
/// with tags `2026-08-20` and `2026-08-21`, and an `extra` repository whose
/// branch `main` holds one file.
pub struct RunStore {
    pub tmp: tempfile::TempDir,
}

impl RunStore {
    pub fn new() -> RunStore {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let tarball = portroot::fixture::stage::StageTarball::build(
            tmp.path(),
            portroot::fixture::stage::Compression::None,
        )
        .unwrap();
        util::ok(
            util::portroot(&store)
                .args(["-q", "stage", "add", "--name", "test"])
                .arg(&tarball),
        );
        fs::create_dir_all(store.join("repos")).unwrap();
        let gentoo = git2::Repository::init_bare(store.join("repos/gentoo.git")).unwrap();
        for (tag, stamp) in [("2026-08-20", "1787270400"), ("2026-08-21", "1787359500")] {
            let files = [
                ("metadata/timestamp.x", format!("{stamp} {tag}\n")),
                ("app-misc/hello/hello-1.ebuild", "EAPI=8\n".to_owned()),
            ];
            commit_and_tag(&gentoo, &files, Some(tag), "refs/heads/main");
        }
        let extra = git2::Repository::init_bare(store.join("repos/extra.git")).unwrap();
        commit_and_tag(
            &extra,
            &[("profiles/repo_name", "extra\n".to_owned())],
            None,
            "refs/heads/main",
        );
        RunStore { tmp }
    }

    pub fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    pub fn rootfs(&self) -> PathBuf {
        let stages = self.store().join("stages");
        let digest = fs::read_dir(&stages)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("rootfs").is_dir())
            .expect("a stage directory with a rootfs");
        digest.join("rootfs")
    }

    pub fn run(&self) -> Command {
        let mut c = util::portroot(&self.store());
        c.args(["run", "--stage", "test", "--tag", "2026-08-20"]);
        c.env("PORTROOT_TEST_LEAK", "host-secret");
        c
    }
}

fn commit_and_tag(
    repo: &git2::Repository,
    files: &[(&str, String)],
    tag: Option<&str>,
    branch: &str,
) {
    let mut index = git2::Index::new().unwrap();
    for (path, content) in files {
        let oid = repo.blob(content.as_bytes()).unwrap();
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: oid,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry).unwrap();
    }
    let tree = repo.find_tree(index.write_tree_to(repo).unwrap()).unwrap();
    let sig = git2::Signature::new(
        "portroot test",
        "test@example.invalid",
        &git2::Time::new(1787270400, 0),
    )
    .unwrap();
    let parent = repo
        .refname_to_id(branch)
        .ok()
        .map(|id| repo.find_commit(id).unwrap());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let commit = repo
        .commit(Some(branch), &sig, &sig, "snapshot", &tree, &parents)
        .unwrap();
    if let Some(tag) = tag {
        let obj = repo.find_object(commit, None).unwrap();
        repo.tag(tag, &obj, &sig, tag, false).unwrap();
    }
}

pub(crate) fn run_dirs(store: &Path) -> Vec<PathBuf> {
    match fs::read_dir(store.join("runs")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn run_eight_parallel_jobs_isolated_and_collected() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let before_rootfs = listing(&rs.rootfs());
    let before_mounts = mountinfo();
    let script = "set -e; cd /var/db/repos; cat gentoo/metadata/timestamp.x extra/profiles/repo_name;\
        echo host=$(hostname) pid=$$ init=$(cat /proc/1/cmdline | tr '\\0' ' ');\
        echo env=$(/usr/bin/env | sort | tr '\\n' ' ');\
        grep -h -e FEATURES -e PKGDIR -e main-repo -e location /etc/portage/make.conf /etc/portage/repos.conf/gentoo.conf;\
        echo portage=$(su -s /bin/sh -c 'id -u; cat gentoo/metadata/timestamp.x' portage | tr '\\n' ' ');\
        if su -s /bin/sh -c 'touch gentoo/x' portage 2>/dev/null; then echo portage-wrote; fi;\
        echo $(hostname) > /root/mine; echo pkg > /var/cache/binpkgs/$(hostname).gpkg.tar;\
        ls /root";
    let out = util::run(
        rs.run()
            .args([
                "--repo-ref",
                "extra=main",
                "--repeat",
                "8",
                "--jobs",
                "8",
                "--",
            ])
            .arg(script),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a single warning: the tree's FUSE mount answers flush itself and
    // unmounts quietly.
    assert!(stderr.trim().is_empty(), "{stderr}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("JOB") && out.contains("STATUS") && out.contains("SECONDS"),
        "{out}"
    );
    let runs = run_dirs(&rs.store());
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    for i in 1..=8 {
        let log = fs::read_to_string(run.join(i.to_string()).join("log")).unwrap();
        assert!(
            log.contains("1787270400 2026-08-20\nextra\n"),
            "job {i}: {log}"
        );
        assert!(
            log.contains(&format!("host={i} pid=2 init=")),
            "job {i}: {log}"
        );
        assert!(!log.contains("host-secret"), "job {i}: {log}");
        // Portage drops to its own user to read the tree: the FUSE mount,
        // bound into the chroot, serves uid 250 too, and read-only.
        assert!(
            log.contains("portage=250 1787270400 2026-08-20\n"),
            "job {i}: {log}"
        );
        assert!(!log.contains("portage-wrote"), "job {i}: {log}");
        // A login shell: the stage's /etc/profile ran.
        let marker = portroot::fixture::stage::PROFILE_MARKER;
        assert!(log.contains(&format!("{marker}=")), "job {i}: {log}");
        assert!(
            log.contains("buildpkg cgroup ipc-sandbox network-sandbox parallel-fetch"),
            "{log}"
        );
        assert!(log.contains("PKGDIR=\"/var/cache/binpkgs\""), "{log}");
        assert!(log.contains("main-repo = gentoo"), "{log}");
        assert!(log.contains("location = /var/db/repos/extra"), "{log}");
        // Each job sees only its own writes.
        assert!(log.ends_with("mine\n"), "job {i}: {log}");
        // The status first; what the job used follows on lines of its own.
        assert_eq!(
            fs::read_to_string(run.join(i.to_string()).join("status"))
                .unwrap()
                .lines()
                .next(),
            Some("ok")
        );
        assert!(
            !run.join(i.to_string()).join("upper").exists(),
            "chroot not removed"
        );
        assert_eq!(
            fs::read_to_string(util::pkgdir(&rs.store()).join(format!("{i}.gpkg.tar"))).unwrap(),
            "pkg\n"
        );
    }
    assert!(!run.join("repos").exists());
    assert_same_listing(&listing(&rs.rootfs()), &before_rootfs);
    assert_mountinfo_unchanged(&before_mounts, &[rs.tmp.path()]);
    assert!(util::ok(util::portroot(&rs.store()).arg("ps")).is_empty());
}

#[test]
fn run_reports_a_failing_job_and_the_others_succeed() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let jobs = rs.tmp.path().join("jobs");
    fs::write(&jobs, "good\ttrue\nbad\texit 3\nalso-good\techo fine\n").unwrap();
    let out = util::run(rs.run().arg("--job-file").arg(&jobs));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "portroot: 1 of 3 jobs failed\n");
    let table = String::from_utf8_lossy(&out.stdout);
    let status_of = |job: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(job))
            .unwrap_or_else(|| panic!("{job} missing: {table}"))
            .to_owned()
    };
    assert!(status_of("bad").contains("exit 3"), "{table}");
    assert!(status_of("good").contains(" ok "), "{table}");
    assert!(status_of("also-good").contains(" ok "), "{table}");
}

#[test]
fn runs_lists_each_run_with_its_pinned_tag_and_state() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let empty = util::run(util::portroot(&rs.store()).arg("runs"));
    assert!(empty.status.success());
    assert!(empty.stdout.is_empty(), "no runs, no table");
    util::ok(rs.run().args(["--", "true"]));
    let failing = util::run(rs.run().args(["--repeat", "2", "--", "exit 4"]));
    assert_eq!(failing.status.code(), Some(1));

    let table = util::ok(util::portroot(&rs.store()).arg("runs"));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one line per run: {table}");
    assert!(lines[0].starts_with("RUN "), "{table}");
    let fields = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (ok, failed) = (fields(lines[1]), fields(lines[2]));
    assert_eq!(ok.last().map(String::as_str), Some("ok"), "{table}");
    assert!(ok.contains(&"1/1".to_owned()), "{table}");
    assert_eq!(failed.last().map(String::as_str), Some("failed"), "{table}");
    assert!(failed.contains(&"0/2".to_owned()), "{table}");

    // The record pins the tree: the tag as named and the commit it named.
    let json = util::ok(util::portroot(&rs.store()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&json).expect("runs --json is JSON");
    let runs = runs.as_array().expect("an array");
    assert_eq!(runs.len(), 2);
    let tree = &runs[0]["record"]["trees"][0];
    let commit = tree["commit"].as_str().expect("a pinned commit");
    assert_eq!(commit.len(), 40, "{tree}");
    assert!(
        ok.iter()
            .any(|f| commit.starts_with(f.as_str()) && f.len() == 10),
        "{table}"
    );
    assert_eq!(runs[1]["state"], "failed");
}

#[test]
fn every_run_leaves_a_report_a_person_can_open() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let jobs = rs.tmp.path().join("jobs");
    fs::write(
        &jobs,
        "good\techo '<script>alert(1)</script>' && echo pkg > /var/cache/binpkgs/good-1.gpkg.tar\n\
         bad\techo 'it broke & stopped' && exit 3\n",
    )
    .unwrap();
    let out = util::run(rs.run().arg("--job-file").arg(&jobs));
    assert_eq!(out.status.code(), Some(1));
    let runs_dir = rs.store().join("runs");
    let run = fs::read_dir(&runs_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let page = fs::read_to_string(run.join("index.html")).expect("the run wrote its report");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains(r#"id="state">failed<"#), "{page}");
    assert!(
        page.contains(r#"data-job="good" data-status="ok""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-job="bad" data-status="exit 3""#),
        "{page}"
    );
    // What a job printed is text, never markup.
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("it broke &amp; stopped"), "{page}");
    assert!(page.contains(r#"href="bad/log""#), "{page}");
    assert!(
        page.contains(r#"<li class="package">good-1</li>"#),
        "{page}"
    );
    // The pinned inputs are on the page.
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let digest = record["stage_digest"].as_str().unwrap();
    let commit = record["trees"][0]["commit"].as_str().unwrap();
    assert!(page.contains(digest) && page.contains(commit), "{page}");

    // `report` writes it again and prints where.
    fs::remove_file(run.join("index.html")).unwrap();
    let id = run.file_name().unwrap().to_str().unwrap();
    let printed = util::ok(util::portroot(&rs.store()).args(["report", id]));
    assert_eq!(printed.trim_end(), run.join("index.html").to_str().unwrap());
    assert_eq!(fs::read_to_string(run.join("index.html")).unwrap(), page);
    let missing = util::run(util::portroot(&rs.store()).args(["report", "20000101-000000-0000"]));
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn run_with_usr_portage_layout_and_tag_two() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let mut cmd = util::portroot(&rs.store());
    cmd.args([
        "run",
        "--stage",
        "test",
        "--tag",
        "2026-08-21",
        "--layout",
        "usr-portage",
        "--network",
        "none",
        "--",
    ])
    .arg("cat /usr/portage/metadata/timestamp.x; cat /proc/net/dev");
    util::ok(&mut cmd);
    let run = &run_dirs(&rs.store())[0];
    let log = fs::read_to_string(run.join("1/log")).unwrap();
    assert!(log.contains("1787359500 2026-08-21\n"), "{log}");
    assert!(
        !log.lines().any(|l| l.trim_start().starts_with("eth")),
        "{log}"
    );
}

#[test]
fn run_bad_input_leaves_nothing_behind() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let before = listing(&rs.store());
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "run",
                "--stage",
                "nope",
                "--tag",
                "2026-08-20",
                "--",
                "true",
            ],
            "nope",
        ),
        (
            &[
                "run",
                "--stage",
                "test",
                "--tag",
                "1999-01-01",
                "--",
                "true",
            ],
            "1999-01-01",
        ),
        (
            &[
                "run",
                "--stage",
                "test",
                "--tag",
                "2026-08-20",
                "--repo-ref",
                "missing=main",
                "--",
                "true",
            ],
            "missing",
        ),
        (
            &["run", "--stage", "test", "--tag", "2026-08-20"],
            "command",
        ),
    ];
    for (args, what) in cases {
        let err = util::fails(util::portroot(&rs.store()).args(args), 1);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    }
    assert_same_listing(&listing(&rs.store()), &before);
    // A busy stage (being removed: `stage rm` holds its lock exclusively).
    let lock = fs::File::open(rs.rootfs().parent().unwrap().join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let err = util::fails(
        util::portroot(&rs.store()).args([
            "run",
            "--stage",
            "test",
            "--tag",
            "2026-08-20",
            "--",
            "true",
        ]),
        1,
    );
    assert!(err.contains("busy"), "{err}");
    drop(held);
    assert_same_listing(&listing(&rs.store()), &before);
    // A stage without /bin/bash.
    fs::remove_file(rs.rootfs().join("bin/bash")).unwrap();
    let before = listing(&rs.store());
    let err = util::fails(
        util::portroot(&rs.store()).args([
            "run",
            "--stage",
            "test",
            "--tag",
            "2026-08-20",
            "--",
            "true",
        ]),
        1,
    );
    assert!(err.contains("/bin/bash"), "{err}");
    assert_same_listing(&listing(&rs.store()), &before);
    util::assert_no_mounts_under(rs.tmp.path());
}

#[test]
fn sigkill_of_the_runner_leaves_no_mount_and_gc_cleans_up() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let cookie = || util::pkgdir(&rs.store());
    let mut child = rs
        .run()
        .args([
            "--repeat",
            "2",
            "--",
            "touch /var/cache/binpkgs/started-$(hostname); sleep 600",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (without a time limit on correctness) until both jobs are running.
    while !(cookie().join("started-1").exists() && cookie().join("started-2").exists()) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(child.try_wait().unwrap().is_none(), "runner exited early");
    }
    let ps = util::ok(util::portroot(&rs.store()).arg("ps"));
    assert!(ps.contains(&child.id().to_string()), "{ps}");
    child.kill().unwrap();
    child.wait().unwrap();
    util::assert_no_mounts_under(rs.tmp.path());
    // The jobs died with the runner: nobody holds files in the run any more.
    let runs = run_dirs(&rs.store());
    assert_eq!(runs.len(), 1);
    assert!(util::ok(util::portroot(&rs.store()).arg("ps")).is_empty());
    util::ok(util::portroot(&rs.store()).arg("gc"));
    assert!(run_dirs(&rs.store()).is_empty());
}

#[test]
fn keep_then_shell_reenters_the_job_chroot() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    util::ok(rs.run().args(["--keep", "--", "echo kept > /root/state"]));
    let run = run_dirs(&rs.store()).remove(0);
    let id = run.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(run.join("1/upper/root/state").is_file());
    let mut shell = util::portroot(&rs.store());
    shell
        .args(["shell", "--run", &id, "--job", "1"])
        .stdin(std::process::Stdio::piped());
    shell.stdout(std::process::Stdio::piped());
    let mut child = shell.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /root/state; cat /var/db/repos/gentoo/metadata/timestamp.x; hostname\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "kept\n1787270400 2026-08-20\n1\n");
    util::assert_no_mounts_under(rs.tmp.path());
    // gc leaves finished runs alone unless --all.
    util::ok(util::portroot(&rs.store()).arg("gc"));
    assert!(run.is_dir());
    util::ok(util::portroot(&rs.store()).args(["gc", "--all"]));
    assert!(!run.exists());
}

#[test]
fn shell_on_a_stage_runs_stdin_and_removes_its_chroot() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let mut shell = util::portroot(&rs.store());
    shell
        .args(["shell", "--stage", "test", "--tag", "2026-08-21"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = shell.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /var/db/repos/gentoo/metadata/timestamp.x; exit 4\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1787359500 2026-08-21\n"
    );
    assert!(run_dirs(&rs.store()).is_empty());
    util::assert_no_mounts_under(rs.tmp.path());
}

#[test]
fn sigterm_stops_the_run_and_tears_down() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let cookie = || util::pkgdir(&rs.store());
    let mut child = rs
        .run()
        .args(["--repeat", "3", "--jobs", "2", "--keep", "--"])
        .arg("touch /var/cache/binpkgs/started-$(hostname); sleep 600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !(cookie().join("started-1").exists() && cookie().join("started-2").exists()) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(child.try_wait().unwrap().is_none(), "runner exited early");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        !cookie().join("started-3").exists(),
        "a queued job started after SIGTERM"
    );
    let run = &run_dirs(&rs.store())[0];
    for job in ["1", "2", "3"] {
        assert!(
            !run.join(job).join("upper").exists(),
            "job {job} chroot left"
        );
    }
    util::assert_no_mounts_under(rs.tmp.path());
}

#[test]
fn run_reads_a_job_file_from_stdin_and_quotes_words() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let mut child = rs
        .run()
        .args(["--job-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"zlib\techo building zlib\nbash-5\techo building $(hostname)\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let run = run_dirs(&rs.store()).remove(0);
    assert_eq!(
        fs::read_to_string(run.join("zlib/log")).unwrap(),
        "building zlib\n"
    );
    assert_eq!(
        fs::read_to_string(run.join("bash-5/log")).unwrap(),
        "building bash-5\n"
    );

    // Several words after `--` stay separate arguments, nothing expands.
    util::ok(
        rs.run()
            .args(["--", "printf", "[%s]", "a b", "$HOME", "it's"]),
    );
    let run = run_dirs(&rs.store())
        .into_iter()
        .find(|r| r.join("1").is_dir())
        .unwrap();
    assert_eq!(
        fs::read_to_string(run.join("1/log")).unwrap(),
        "[a b][$HOME][it's]"
    );
}
