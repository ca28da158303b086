//! A job is a container: what a job may and may not do, probed from inside a
//! real job (the sandbox helper alone, then `portroot run`) as root. Each probe
//! is harmless where it succeeds: files are only opened for writing, never
//! written; the clock is set to the second it already shows; `lo` gets the
//! MTU it already has.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::runner::{run_dirs, stdout, RunStore, Sandbox};
use crate::util;

/// The mount options (field 6) of every mount whose mount point (field 5)
/// is `prefix` or below it, from mountinfo lines prefixed `mnt: `.
fn mounts_under<'a>(out: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("mnt: "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (mp, opts) = (*f.get(4)?, *f.get(5)?);
            (mp == prefix || mp.starts_with(&format!("{prefix}/"))).then_some((mp, opts))
        })
        .collect()
}

fn has_opt(opts: &str, want: &str) -> bool {
    opts.split(',').any(|o| o == want)
}

#[test]
fn sys_is_read_only_all_the_way_down() {
    if !util::require_root() {
        return;
    }
    let sb = Sandbox::new(
        "sed 's/^/mnt: /' /proc/self/mountinfo;\
         if busybox mount -o remount,rw /sys 2>/dev/null; then echo remount-rw-ok; fi;\
         if busybox mount -o remount,bind,rw /sys 2>/dev/null; then echo bind-rw-ok; fi;\
         if busybox touch /sys/fs/portroot-probe 2>/dev/null; then echo sys-writable; fi",
    );
    let out = stdout(&sb.run());
    let sys = mounts_under(&out, "/sys");
    assert!(sys.len() > 1, "no submounts of /sys to check: {out}");
    let writable: Vec<_> = sys.iter().filter(|(_, o)| !has_opt(o, "ro")).collect();
    assert!(writable.is_empty(), "writable under /sys: {writable:?}");
    // Neither a superblock remount nor a bind remount: the mounts are locked.
    assert!(!out.contains("remount-rw-ok"), "{out}");
    assert!(!out.contains("bind-rw-ok"), "{out}");
    assert!(!out.contains("sys-writable"), "{out}");
    // The firmware tables are masked by an empty tmpfs.
    assert!(
        mounts_under(&out, "/sys/firmware")
            .iter()
            .any(|(mp, _)| *mp == "/sys/firmware"),
        "{out}"
    );
}

#[test]
fn proc_is_read_only_and_masked_where_runtimes_do_it() {
    if !util::require_root() {
        return;
    }
    // Opened for appending, never written: the old code would have let it.
    let sb = Sandbox::new(
        "for f in /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches /proc/sysrq-trigger; do \
           if (exec 3>>$f) 2>/dev/null; then echo \"writable $f\"; else echo \"refused $f\"; fi;\
         done;\
         for f in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $f ] && echo \"$f $(busybox head -c 64 $f | busybox wc -c)\";\
         done;\
         echo self=$(readlink /proc/self)",
    );
    let out = stdout(&sb.run());
    for f in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/drop_caches",
        "/proc/sysrq-trigger",
    ] {
        assert!(out.contains(&format!("refused {f}\n")), "{out}");
    }
    for f in ["/proc/kcore", "/proc/keys", "/proc/timer_list"] {
        if let Some(line) = out.lines().find(|l| l.starts_with(&format!("{f} "))) {
            assert_eq!(line, format!("{f} 0"), "{f} not masked: {out}");
        }
    }
    // The job's own processes are still there to see.
    assert!(out.contains("self=") && !out.contains("self=\n"), "{out}");
}

#[test]
fn dev_is_private_without_block_devices() {
    if !util::require_root() {
        return;
    }
    let marker = format!("portroot-isolation-{}", std::process::id());
    let host_shm = Path::new("/dev/shm").join(&marker);
    let sb = Sandbox::new(&format!(
        "for f in /dev/* /dev/*/*; do [ -b \"$f\" ] && echo \"block $f\"; done;\
         ls /dev | tr '\\n' ' '; echo;\
         echo x > /dev/null && echo null-ok;\
         echo zero=$(busybox head -c 4 /dev/zero | busybox wc -c);\
         if (exec 3<>/dev/ptmx) 2>/dev/null; then echo ptmx-ok; fi;\
         echo ptmx=$(readlink /dev/ptmx);\
         sed 's/^/mnt: /' /proc/self/mountinfo;\
         echo shm > /dev/shm/{marker} && echo shm-ok"
    ));
    let out = stdout(&sb.run());
    let leaked = host_shm.exists();
    let _ = fs::remove_file(&host_shm);
    assert!(!out.contains("block "), "{out}");
    let names = out.lines().next().unwrap_or("");
    for want in [
        "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout", "stderr",
        "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(
            names.split(' ').any(|n| n == want),
            "no /dev/{want}: {names}"
        );
    }
    assert!(!names.split(' ').any(|n| n == "core"), "{names}");
    assert!(
        out.contains("null-ok\n") && out.contains("zero=4\n"),
        "{out}"
    );
    assert!(
        out.contains("ptmx-ok\n") && out.contains("ptmx=pts/ptmx\n"),
        "{out}"
    );
    let kinds: Vec<_> = out
        .lines()
        .filter_map(|l| l.strip_prefix("mnt: "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|w| *w == "-")?;
            Some((f[4], f[sep + 1]))
        })
        .filter(|(mp, _)| mp.starts_with("/dev"))
        .collect();
    for (mp, fstype) in [
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
    ] {
        assert!(
            kinds.contains(&(mp, fstype)),
            "{mp} is not {fstype}: {kinds:?}"
        );
    }
    assert!(out.contains("shm-ok\n"), "{out}");
    assert!(!leaked, "/dev/shm is the host's");
}

#[test]
fn host_wide_privileges_are_refused_own_namespaces_still_work() {
    if !util::require_root() {
        return;
    }
    // Host network (the default). `date -s` sets the second the clock is in
    // just after it ticks, and `lo` gets its own MTU: harmless if allowed
    // (and busybox asks the kernel for both even when nothing changes).
    let sb = Sandbox::new(
        "t=$(busybox date +%s); while [ $(busybox date +%s) = $t ]; do :; done;\
         busybox date -s @$((t + 1)) 2>&1 >/dev/null | sed 's/^/date: /';\
         busybox ip link set lo mtu $(cat /sys/class/net/lo/mtu) 2>&1 | sed 's/^/ip: /';\
         echo caps=$(grep CapBnd /proc/self/status);\
         busybox unshare -n -i -p -m -u -f /bin/sh -c '\
           busybox mount --make-rslave / && busybox mount --make-slave /proc &&\
           busybox mount -t proc proc /proc && echo nested-pid=$$ &&\
           busybox ip link set lo up && echo nested-lo-up &&\
           busybox mount -t tmpfs nested /tmp && echo nested-tmpfs &&\
           busybox hostname nested && echo nested-hostname' ;\
         busybox su -s /bin/sh -c 'touch /tmp/by-portage' portage;\
         touch /root/chowned && busybox chown 250:250 /root/chowned && echo chown-ok",
    );
    fs::write(
        sb.base.join("rootfs/etc/group"),
        "root:x:0:\nportage:x:250:\n",
    )
    .unwrap();
    let out = stdout(&sb.run());
    for tool in ["date: ", "ip: "] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(tool) && l.ends_with("Operation not permitted")),
            "{tool}not refused with EPERM: {out}"
        );
    }
    // Module loading, raw I/O, clock, reboot, syslog, MAC, perf and BPF are
    // out of the bounding set: bits 16, 17, 22, 25, 32-34, 38, 39.
    let caps = out
        .lines()
        .find_map(|l| l.strip_prefix("caps=CapBnd:"))
        .unwrap_or_else(|| panic!("{out}"));
    let caps = u64::from_str_radix(caps.trim(), 16).unwrap();
    for bit in [16, 17, 22, 25, 32, 33, 34, 38, 39] {
        assert_eq!(caps & (1 << bit), 0, "capability {bit} kept: {caps:x}");
    }
    assert_ne!(caps & (1 << 21), 0, "CAP_SYS_ADMIN dropped: {caps:x}");
    // What portage's sandboxes do: a PID, mount, network, IPC namespace of
    // its own, a fresh proc, loopback up, tmpfs.
    for want in [
        "nested-pid=1\n",
        "nested-lo-up\n",
        "nested-tmpfs\n",
        "nested-hostname\n",
        "chown-ok\n",
    ] {
        assert!(out.contains(want), "no {want:?}: {out}");
    }
    // Ownership is the host's: userpriv's files are 250 on disk.
    for (file, owner) in [("tmp/by-portage", 250), ("root/chowned", 250)] {
        let md = fs::metadata(sb.base.join("upper").join(file)).unwrap();
        assert_eq!((md.uid(), md.gid()), (owner, owner), "{file}");
    }
}

#[test]
fn trees_and_caches_are_nosuid_nodev_and_the_job_writes_what_it_should() {
    if !util::require_root() {
        return;
    }
    let sb = Sandbox::new(
        "sed 's/^/mnt: /' /proc/self/mountinfo;\
         echo root > /root/w && echo d > /var/cache/distfiles/d && echo p > /var/cache/binpkgs/p && echo writes-ok",
    );
    let out = stdout(&sb.run());
    assert!(out.contains("writes-ok\n"), "{out}");
    for (mp, ro) in [
        ("/var/db/repos/gentoo", true),
        ("/var/db/repos/extra", true),
        ("/var/cache/distfiles", false),
        ("/var/cache/binpkgs", false),
    ] {
        let mounts = mounts_under(&out, mp);
        let (_, opts) = mounts
            .iter()
            .find(|(m, _)| *m == mp)
            .unwrap_or_else(|| panic!("{mp} not mounted: {out}"));
        assert!(
            has_opt(opts, "nosuid") && has_opt(opts, "nodev"),
            "{mp}: {opts}"
        );
        assert_eq!(has_opt(opts, "ro"), ro, "{mp}: {opts}");
    }
    assert_eq!(
        fs::read_to_string(sb.base.join("upper/root/w")).unwrap(),
        "root\n"
    );
    assert_eq!(
        fs::read_to_string(sb.base.join("distfiles/d")).unwrap(),
        "d\n"
    );
    assert_eq!(
        fs::read_to_string(sb.base.join("binpkgs/p")).unwrap(),
        "p\n"
    );
}

#[test]
fn run_refuses_setuid_files_and_escaping_links_left_in_pkgdir() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let out = util::run(rs.run().args([
        "--",
        "cd /var/cache/binpkgs && echo ok > ok.gpkg.tar && ln -s ok.gpkg.tar latest &&\
         mkdir -p app-misc && echo x > app-misc/suid && chmod 4755 app-misc/suid &&\
         echo x > sgid && chmod 2755 sgid && ln -s /etc/shadow escape && ln -s ../../.. up",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // PKGDIR was the run's binhost generation.
    let binpkgs = util::pkgdir(&rs.store());
    let run = run_dirs(&rs.store()).remove(0);
    let refused: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("portroot: refused "))
        .collect();
    assert_eq!(refused.len(), 4, "{stderr}");
    for (name, why) in [
        ("app-misc/suid", "setuid"),
        ("sgid", "setgid"),
        ("escape", "symlink leaving the binhost (-> /etc/shadow)"),
        ("up", "symlink leaving the binhost (-> ../../..)"),
    ] {
        let line = format!(
            "portroot: refused {}: {why}; moved to {}",
            binpkgs.join(name).display(),
            run.join("refused").join(name).display()
        );
        assert!(refused.contains(&line.as_str()), "no {line:?}: {stderr}");
        assert!(
            fs::symlink_metadata(binpkgs.join(name)).is_err(),
            "{name} left"
        );
        let moved = fs::symlink_metadata(run.join("refused").join(name)).unwrap();
        assert_eq!(moved.mode() & 0o6000, 0, "{name} still setuid or setgid");
    }
    assert!(
        stderr.contains("portroot: 4 file(s) refused from the binhost"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(binpkgs.join("latest")).unwrap(), "ok\n");
    let record = fs::read_to_string(run.join("run.json")).unwrap();
    assert!(record.contains("\"refused\""), "{record}");
}

#[test]
fn distfiles_are_created_root_portage_2775() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let distfiles = rs.store().join("distfiles");
    assert!(!distfiles.exists());
    util::ok(rs.run().args(["--", "touch /var/cache/distfiles/f"]));
    let md = fs::metadata(&distfiles).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 250));
    assert_eq!(md.permissions().mode() & 0o7777, 0o2775);
    // The setgid directory hands its group to what jobs download.
    assert_eq!(fs::metadata(distfiles.join("f")).unwrap().gid(), 250);
}

#[test]
fn tmpfs_covers_a_directory_with_its_owner_and_mode_and_keeps_nothing() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    // /tmp is the stage's (root, 1777): the tmpfs takes its owner and mode.
    // /scratch is not in the stage: made for the mount. Nothing written to
    // either reaches the job's upper directory.
    util::ok(rs.run().args([
        "--keep",
        "--tmpfs",
        "/tmp=16M",
        "--tmpfs",
        "/scratch",
        "--",
        "grep -e ' /tmp ' -e ' /scratch ' /proc/mounts | sed 's/^/mnt: /';\
         stat -c 'owner: %u:%g %a' /tmp; echo in-ram > /tmp/f; echo s > /scratch/g",
    ]));
    let run = run_dirs(&rs.store()).pop().expect("a run");
    let log = fs::read_to_string(run.join("1").join("log")).unwrap();
    let tmp = log
        .lines()
        .find(|l| l.starts_with("mnt: tmpfs /tmp "))
        .unwrap_or_else(|| panic!("no tmpfs at /tmp: {log}"));
    let opts = tmp.split(' ').nth(4).unwrap();
    assert!(has_opt(opts, "size=16384k"), "{tmp}");
    assert!(has_opt(opts, "nosuid") && has_opt(opts, "nodev"), "{tmp}");
    assert!(log.contains("mnt: tmpfs /scratch "), "{log}");
    assert!(log.contains("owner: 0:0 1777"), "{log}");
    let upper = run.join("1").join("upper");
    assert!(upper.is_dir(), "--keep keeps the upper directory");
    assert!(!upper.join("tmp/f").exists());
    assert!(!upper.join("scratch/g").exists());
    // A bad spec is a usage error.
    let err = util::fails(rs.run().args(["--tmpfs", "relative", "--", "true"]), 2);
    assert!(err.contains("must be absolute"), "{err}");
}
