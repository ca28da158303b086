//! Mount plans: the pure description of how one chroot is put together.
//!
//! [`MountPlan::for_chroot`] turns a [`ChrootLayout`] (stage layers, the job's
//! upper/work directories, the trees and caches to bind) into two lists of
//! [`MountOp`]s in the one fixed order the sandbox applies them.
//!
//! [`MountPlan::ops`], applied by the sandbox's init as root of the host's
//! user namespace, before `pivot_root`:
//!
//! 1. the overlay (upper over the stage layers) on the job's `root/`;
//! 2. the trees (`/var/db/repos/gentoo`, `--repo-ref`s: read-only) and the
//!    caches (DISTDIR, PKGDIR: writable), all `nosuid,nodev`;
//! 3. `proc` (inside the new PID namespace, so it shows the job's processes);
//! 4. a private `/dev` as bubblewrap's `--dev` makes it: a tmpfs with `null`,
//!    `zero`, `full`, `random`, `urandom` and `tty` bound from the host, the
//!    `fd`/`stdin`/`stdout`/`stderr` links, a fresh devpts with
//!    `ptmx -> pts/ptmx`, a private `/dev/shm` and a fresh `/dev/mqueue`;
//! 5. `/sys` bound recursively, then read-only all the way down
//!    (`mount_setattr(2)` with `AT_RECURSIVE`);
//! 6. `/sys/firmware` and `/sys/devices/virtual/powercap` masked;
//! 7. last, only when the job has a cgroup namespace
//!    ([`MountPlan::mount_cgroup`]): a fresh cgroup2 over the host's at
//!    `/sys/fs/cgroup`, showing only the job's own group, writable.
//!
//! The job then gets its own user namespace (ids mapped onto themselves) and
//! mount namespace, in which the kernel locks every mount above: the job can
//! neither unmount nor remount any of them read-write (mount_namespaces(7),
//! "restrictions on mount namespaces").
//!
//! [`MountPlan::job_ops`], applied inside the job's user namespace after
//! `pivot_root`: `/proc` as container runtimes leave it (runc's and moby's
//! default `readonlyPaths` and `maskedPaths`): `/proc/sys`,
//! `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus` and `/proc/fs` read-only,
//! `/proc/kcore`, `/proc/keys`, `/proc/timer_list`, `/proc/sched_debug` and
//! the like masked. These are made in the job's namespace on purpose: the
//! kernel lets a user namespace mount a fresh `proc` (portage's pid-sandbox
//! does) only while some `proc` in its mount namespace has no *locked* mount
//! covering part of it (`mnt_already_visible()` in fs/namespace.c), so locked
//! masks would break every ebuild phase under `FEATURES=pid-sandbox`.
//!
//! Nothing here touches the system: the sandbox (`sandbox.rs`) only executes
//! the plan, and the unit tests below pin the order and the option escaping.

mod overlay;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::overlay::{escape_overlay_path, lowerdir_option, overlay_options};

/// One directory bound into the chroot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path of the directory (a FUSE tree, `distfiles/`, `binpkgs/`).
    pub source: PathBuf,
    /// Absolute path inside the chroot, e.g. `/var/db/repos/gentoo`.
    pub target: PathBuf,
    /// Whether the job may write to it (caches) or not (portage trees).
    pub writable: bool,
}

/// What one chroot is made of. Paths outside the chroot are host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChrootLayout {
    /// Read-only lower layers, top first; the last one is the stage rootfs.
    pub layers: Vec<PathBuf>,
    /// The job's overlay upper directory (receives every write).
    pub upper: PathBuf,
    /// The overlay work directory, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// Where the overlay is mounted: the chroot's `/`.
    pub root: PathBuf,
    /// Trees and caches bound inside, in this order.
    pub binds: Vec<Bind>,
    /// Fresh tmpfs mounts over directories of the chroot (`--tmpfs`), made
    /// before the binds.
    #[serde(default)]
    pub tmpfs: Vec<TmpfsMount>,
}

/// A tmpfs over a directory of the chroot, for build directories such as
/// `/var/tmp/portage` in RAM (tinderbox's way). It takes the owner and mode
/// of the directory it covers, so portage sees the stage's permissions, and
/// its files never reach the job's upper directory or a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    /// Absolute path inside the chroot.
    pub target: PathBuf,
    /// The size limit in bytes; `None` is the kernel's default (half of RAM).
    pub size: Option<u64>,
}

/// Per-mount flags set on a bind after it is made, with `mount_setattr(2)`:
/// on the bind alone, or on its whole tree if the bind is recursive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// `MOUNT_ATTR_RDONLY`.
    pub readonly: bool,
    /// `MOUNT_ATTR_NOSUID`: setuid and file capabilities are ignored.
    pub nosuid: bool,
    /// `MOUNT_ATTR_NODEV`: device nodes cannot be opened.
    pub nodev: bool,
    /// `MOUNT_ATTR_NOEXEC`.
    pub noexec: bool,
}

impl Attrs {
    /// `nosuid,nodev`: what every tree and cache bind gets.
    pub const NOSUID_NODEV: Attrs = Attrs {
        readonly: false,
        nosuid: true,
        nodev: true,
        noexec: false,
    };

    /// The same, read-only.
    pub fn readonly(self) -> Attrs {
        Attrs {
            readonly: true,
            ..self
        }
    }
}

/// One step of a [`MountPlan`]. Targets other than the overlay's are absolute
/// paths *inside* the chroot, resolved without leaving it when applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Mount an overlay on the host path `target` with these options.
    Overlay {
        /// The chroot root (host path).
        target: PathBuf,
        /// `lowerdir=..,upperdir=..,workdir=..`, escaped.
        options: OsString,
    },
    /// Bind the directory `source` (host path) on `target` (inside the chroot).
    Bind {
        /// Host directory.
        source: PathBuf,
        /// Path inside the chroot.
        target: PathBuf,
        /// `MS_REC`: take the submounts along (`/sys/fs/cgroup`); `attrs`
        /// and `slave` then apply to all of them.
        recursive: bool,
        /// Set on the bind afterwards (`readonly` here replaces bubblewrap's
        /// second `MS_REMOUNT|MS_BIND|MS_RDONLY`: `mount_setattr` changes
        /// only the flags it is given, so nothing needs repeating).
        attrs: Attrs,
        /// Make it a slave so unmounts inside never propagate out.
        slave: bool,
    },
    /// Bind the host's node `source` (a device) on an empty file created at
    /// `target` (inside the chroot), as bubblewrap's `--dev` does.
    BindNode {
        /// Host device node, e.g. `/dev/null`.
        source: PathBuf,
        /// Path inside the chroot.
        target: PathBuf,
    },
    /// Mount a fresh `proc` on `target` (inside the chroot).
    Proc {
        /// Usually `/proc`.
        target: PathBuf,
    },
    /// Mount a fresh tmpfs on `target` (inside the chroot).
    Tmpfs {
        /// Path inside the chroot.
        target: PathBuf,
        /// Mode of its root directory, e.g. `0o1777` for `/dev/shm`.
        mode: u32,
        /// Mount flags.
        attrs: Attrs,
    },
    /// Mount a new devpts instance on `target`, with
    /// `newinstance,ptmxmode=0666,mode=620` (bubblewrap's options): the job
    /// sees only its own pseudo-terminals.
    Devpts {
        /// Usually `/dev/pts`.
        target: PathBuf,
    },
    /// Mount the job's IPC namespace's POSIX message queues on `target`.
    Mqueue {
        /// Usually `/dev/mqueue`.
        target: PathBuf,
    },
    /// Create the symlink `target -> points_to` (inside the chroot).
    Symlink {
        /// The link, inside the chroot.
        target: PathBuf,
        /// What it points to, stored as is.
        points_to: PathBuf,
    },
    /// Bind `target` over itself, then make it read-only; skipped if the
    /// kernel has no such path (runc's `readonlyPaths`).
    ReadOnlyPath {
        /// Path inside the chroot.
        target: PathBuf,
    },
    /// Hide `target`: `/dev/null` bound over a file, an empty read-only tmpfs
    /// over a directory; skipped if the kernel has no such path (runc's
    /// `maskedPaths`).
    Mask {
        /// Path inside the chroot.
        target: PathBuf,
    },
    /// Mount a fresh tmpfs on `target` (inside the chroot, created if
    /// missing) with the owner and mode of the directory it covers.
    TmpfsOver {
        /// Path inside the chroot.
        target: PathBuf,
        /// `size=` in bytes, if any.
        size: Option<u64>,
    },
    /// Mount a fresh cgroup2 on `target` (inside the chroot). Made in the
    /// job's cgroup namespace, it shows only the namespace's root group.
    Cgroup {
        /// Usually `/sys/fs/cgroup`.
        target: PathBuf,
    },
}

impl MountOp {
    /// The path this step mounts on, for error messages and logs.
    pub fn target(&self) -> &Path {
        match self {
            MountOp::Overlay { target, .. }
            | MountOp::Bind { target, .. }
            | MountOp::BindNode { target, .. }
            | MountOp::Proc { target }
            | MountOp::Tmpfs { target, .. }
            | MountOp::Devpts { target }
            | MountOp::Mqueue { target }
            | MountOp::Symlink { target, .. }
            | MountOp::ReadOnlyPath { target }
            | MountOp::Mask { target }
            | MountOp::TmpfsOver { target, .. }
            | MountOp::Cgroup { target } => target,
        }
    }
}

/// The ordered mount steps of one chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The chroot root (host path), the overlay's mount point.
    pub root: PathBuf,
    /// The steps applied as root of the host's user namespace, before
    /// `pivot_root`, in this order; the first is the overlay. The job's user
    /// namespace sees all of them locked.
    pub ops: Vec<MountOp>,
    /// The steps applied inside the job's user namespace after `pivot_root`
    /// (targets relative to the new `/`), in this order.
    pub job_ops: Vec<MountOp>,
}

/// The host's device nodes bound into every job's `/dev` (bubblewrap's
/// `--dev` list). No block device, no `console`, no `kmsg`.
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/dev` links to the job's own descriptors. bubblewrap also makes
/// `core -> /proc/kcore`, which `/proc` masks anyway: left out.
pub const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Read-only in every job: runc's (and moby's) default `readonlyPaths`.
/// `/proc/sys` matters most: the job's uid 0 is the host's uid 0, which may
/// write every sysctl that checks no capability (`kernel.core_pattern`).
pub const PROC_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Masked in every job's `/proc`: runc's (and moby's) default `maskedPaths`.
pub const PROC_MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

/// Masked under the read-only `/sys`: firmware tables, and the power meters
/// of `powercap` (moby masks it since CVE-2020-8694).
pub const SYS_MASKED: [&str; 2] = ["/sys/firmware", "/sys/devices/virtual/powercap"];

impl MountPlan {
    /// The plan for one job's chroot, in the fixed order described in the
    /// module docs.
    pub fn for_chroot(layout: &ChrootLayout) -> MountPlan {
        let mut ops = vec![MountOp::Overlay {
            target: layout.root.clone(),
            options: overlay_options(&layout.layers, &layout.upper, &layout.work),
        }];
        // Before the binds, so a tree or cache below a tmpfs stays visible.
        ops.extend(layout.tmpfs.iter().map(|t| MountOp::TmpfsOver {
            target: t.target.clone(),
            size: t.size,
        }));
        ops.extend(layout.binds.iter().map(|b| MountOp::Bind {
            source: b.source.clone(),
            target: b.target.clone(),
            recursive: false,
            attrs: if b.writable {
                Attrs::NOSUID_NODEV
            } else {
                Attrs::NOSUID_NODEV.readonly()
            },
            slave: false,
        }));
        ops.push(MountOp::Proc {
            target: PathBuf::from("/proc"),
        });
        ops.extend(dev_ops());
        ops.push(MountOp::Bind {
            source: PathBuf::from("/sys"),
            target: PathBuf::from("/sys"),
            recursive: true,
            attrs: Attrs {
                noexec: true,
                ..Attrs::NOSUID_NODEV.readonly()
            },
            slave: true,
        });
        // The job's writable cgroup2 ([`MountPlan::mount_cgroup`]) is
        // appended after these: over the read-only /sys, before the job's
        // user namespace locks everything.
        ops.extend(
            SYS_MASKED
                .iter()
                .map(|p| MountOp::Mask { target: p.into() }),
        );

        let mut job_ops: Vec<MountOp> = PROC_READONLY
            .iter()
            .map(|p| MountOp::ReadOnlyPath { target: p.into() })
            .collect();
        job_ops.extend(
            PROC_MASKED
                .iter()
                .map(|p| MountOp::Mask { target: p.into() }),
        );
        MountPlan {
            root: layout.root.clone(),
            ops,
            job_ops,
        }
    }
}

/// A private `/dev` (bubblewrap's `setup_newroot`, `SETUP_MOUNT_DEV`).
fn dev_ops() -> Vec<MountOp> {
    let dev = Path::new("/dev");
    let mut ops = vec![MountOp::Tmpfs {
        target: dev.to_owned(),
        mode: 0o755,
        attrs: Attrs::NOSUID_NODEV,
    }];
    ops.extend(DEV_NODES.iter().map(|n| MountOp::BindNode {
        source: dev.join(n),
        target: dev.join(n),
    }));
    ops.extend(DEV_LINKS.iter().map(|(name, to)| MountOp::Symlink {
        target: dev.join(name),
        points_to: PathBuf::from(to),
    }));
    ops.push(MountOp::Devpts {
        target: dev.join("pts"),
    });
    ops.push(MountOp::Tmpfs {
        target: dev.join("shm"),
        mode: 0o1777,
        attrs: Attrs::NOSUID_NODEV,
    });
    ops.push(MountOp::Mqueue {
        target: dev.join("mqueue"),
    });
    ops
}

impl MountPlan {
    /// Add the job's own cgroup2 at `target` (the host's v2 mount point,
    /// under `/sys`), after everything else in the first part: it covers part
    /// of the read-only `/sys`, and is made before the job's user namespace so
    /// the job cannot unmount it.
    pub fn mount_cgroup(&mut self, target: &Path) {
        self.ops.push(MountOp::Cgroup {
            target: target.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn layout() -> ChrootLayout {
        ChrootLayout {
            layers: vec!["/s/layer".into(), "/s/stage/rootfs".into()],
            upper: "/r/1/upper".into(),
            work: "/r/1/work".into(),
            root: "/r/1/root".into(),
            binds: vec![
                Bind {
                    source: "/r/repos/gentoo".into(),
                    target: "/var/db/repos/gentoo".into(),
                    writable: false,
                },
                Bind {
                    source: "/s/binpkgs".into(),
                    target: "/var/cache/binpkgs".into(),
                    writable: true,
                },
            ],
            tmpfs: Vec::new(),
        }
    }

    #[test]
    fn tmpfs_mounts_come_after_the_overlay_before_the_binds() {
        let mut l = layout();
        l.tmpfs.push(TmpfsMount {
            target: "/var/tmp/portage".into(),
            size: Some(8 << 30),
        });
        let plan = MountPlan::for_chroot(&l);
        assert_eq!(
            plan.ops[1],
            MountOp::TmpfsOver {
                target: "/var/tmp/portage".into(),
                size: Some(8 << 30)
            }
        );
        assert_eq!(plan.ops[2].target(), Path::new("/var/db/repos/gentoo"));
    }

    fn targets(ops: &[MountOp]) -> Vec<String> {
        ops.iter()
            .map(|op| op.target().to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn plan_order_is_overlay_binds_proc_dev_sys_then_masks() {
        let plan = MountPlan::for_chroot(&layout());
        let want = [
            "/r/1/root",
            "/var/db/repos/gentoo",
            "/var/cache/binpkgs",
            "/proc",
            "/dev",
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty",
            "/dev/fd",
            "/dev/stdin",
            "/dev/stdout",
            "/dev/stderr",
            "/dev/ptmx",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ];
        assert_eq!(targets(&plan.ops), want);
        assert_eq!(plan.root, PathBuf::from("/r/1/root"));
    }

    #[test]
    fn binds_are_nosuid_nodev_trees_readonly_sys_readonly_all_the_way_down() {
        let plan = MountPlan::for_chroot(&layout());
        let flags: Vec<_> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind {
                    target,
                    recursive,
                    attrs,
                    slave,
                    ..
                } => Some((target.to_str().unwrap(), *recursive, *attrs, *slave)),
                _ => None,
            })
            .collect();
        let ro = Attrs::NOSUID_NODEV.readonly();
        assert_eq!(
            flags,
            vec![
                ("/var/db/repos/gentoo", false, ro, false),
                ("/var/cache/binpkgs", false, Attrs::NOSUID_NODEV, false),
                ("/sys", true, Attrs { noexec: true, ..ro }, true),
            ]
        );
    }

    #[test]
    fn dev_is_a_private_tmpfs_with_bubblewraps_nodes_and_links() {
        let plan = MountPlan::for_chroot(&layout());
        let dev: Vec<_> = plan
            .ops
            .iter()
            .filter(|op| op.target().starts_with("/dev"))
            .collect();
        assert!(matches!(
            dev[0],
            MountOp::Tmpfs { target, mode: 0o755, attrs } if target == Path::new("/dev") && *attrs == Attrs::NOSUID_NODEV
        ));
        // Only character devices come from the host: nothing a job could
        // reach the disks through.
        let nodes: Vec<_> = dev
            .iter()
            .filter_map(|op| match op {
                MountOp::BindNode { source, target } => {
                    assert_eq!(source, target);
                    Some(target.to_str().unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            nodes,
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty"
            ]
        );
        let links: Vec<_> = dev
            .iter()
            .filter_map(|op| match op {
                MountOp::Symlink { target, points_to } => {
                    Some(format!("{} -> {}", target.display(), points_to.display()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            links,
            [
                "/dev/fd -> /proc/self/fd",
                "/dev/stdin -> /proc/self/fd/0",
                "/dev/stdout -> /proc/self/fd/1",
                "/dev/stderr -> /proc/self/fd/2",
                "/dev/ptmx -> pts/ptmx",
            ]
        );
        assert!(dev.contains(&&MountOp::Devpts {
            target: "/dev/pts".into()
        }));
        assert!(dev.contains(&&MountOp::Tmpfs {
            target: "/dev/shm".into(),
            mode: 0o1777,
            attrs: Attrs::NOSUID_NODEV,
        }));
        assert!(dev.contains(&&MountOp::Mqueue {
            target: "/dev/mqueue".into()
        }));
        assert!(!targets(&plan.ops).iter().any(|t| t == "/dev/core"));
    }

    #[test]
    fn job_ops_make_proc_readonly_then_mask_it() {
        let plan = MountPlan::for_chroot(&layout());
        let ro: Vec<_> = plan
            .job_ops
            .iter()
            .take_while(|op| matches!(op, MountOp::ReadOnlyPath { .. }))
            .map(|op| op.target().to_str().unwrap())
            .collect();
        assert_eq!(
            ro,
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        );
        let masked: Vec<_> = plan.job_ops[ro.len()..]
            .iter()
            .map(|op| {
                assert!(matches!(op, MountOp::Mask { .. }), "{op:?}");
                op.target().to_str().unwrap()
            })
            .collect();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
        ] {
            assert!(masked.contains(&p), "{p} not masked: {masked:?}");
        }
        // Nothing in the job's namespace but /proc: everything else is
        // mounted before it and so locked.
        assert!(plan
            .job_ops
            .iter()
            .all(|op| op.target().starts_with("/proc/")));
    }

    #[test]
    fn the_cgroup_step_comes_after_sys() {
        let mut plan = MountPlan::for_chroot(&layout());
        plan.mount_cgroup(Path::new("/sys/fs/cgroup"));
        let n = plan.ops.len();
        let sys = plan
            .ops
            .iter()
            .position(|op| op.target() == Path::new("/sys"));
        assert!(sys.is_some_and(|i| i < n - 1), "{:?}", plan.ops);
        assert_eq!(
            plan.ops[n - 1],
            MountOp::Cgroup {
                target: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn lowerdir_lists_top_layer_first() {
        let plan = MountPlan::for_chroot(&layout());
        let MountOp::Overlay { options, .. } = &plan.ops[0] else {
            panic!("first op is not the overlay: {:?}", plan.ops[0]);
        };
        assert_eq!(
            options,
            "lowerdir=/s/layer:/s/stage/rootfs,upperdir=/r/1/upper,workdir=/r/1/work"
        );
    }
}
