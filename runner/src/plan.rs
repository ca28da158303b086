//! Mount plans: the pure description of how one chroot is put together.
//!
//! [`MountPlan::for_chroot`] turns a [`ChrootLayout`] (stage layers, the job's
//! upper/work directories, the trees and caches to bind) into a list of
//! [`MountOp`]s in the one fixed order the sandbox applies them:
//!
//! 1. the overlay (upper over the stage layers) on the job's `root/`;
//! 2. the read-only trees (`/var/db/repos/gentoo`, `--repo-ref`s) and the
//!    read-write caches (DISTDIR, PKGDIR);
//! 3. `proc` (inside the new PID namespace, so it shows the job's processes);
//! 4. `/dev` and `/sys` bound recursively with slave propagation, `/sys`
//!    read-only, so nothing done inside reaches the host's mounts;
//! 5. last, once `/sys` is in place and only when the job has a cgroup
//!    namespace ([`MountPlan::mount_cgroup`]): a fresh cgroup2 over the
//!    host's, showing only the job's own group, writable.
//!
//! Nothing here touches the system: the sandbox (`sandbox.rs`) only executes
//! the plan, and the unit tests below pin the order and the option escaping.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Bind `source` (host path) on `target` (inside the chroot).
    Bind {
        /// Host directory.
        source: PathBuf,
        /// Path inside the chroot.
        target: PathBuf,
        /// `MS_REC`: take the submounts along (`/dev/pts`, `/sys/fs/cgroup`).
        recursive: bool,
        /// Remount read-only afterwards, keeping the flags already set.
        readonly: bool,
        /// Make it a slave so unmounts inside never propagate out.
        slave: bool,
    },
    /// Mount a fresh `proc` on `target` (inside the chroot).
    Proc {
        /// Usually `/proc`.
        target: PathBuf,
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
            | MountOp::Proc { target }
            | MountOp::Cgroup { target } => target,
        }
    }
}

/// The ordered mount steps of one chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The chroot root (host path), the overlay's mount point.
    pub root: PathBuf,
    /// The steps, in the order they must be applied.
    pub ops: Vec<MountOp>,
}

impl MountPlan {
    /// The plan for one job's chroot, in the fixed order described in the
    /// module docs.
    pub fn for_chroot(layout: &ChrootLayout) -> MountPlan {
        let mut ops = vec![MountOp::Overlay {
            target: layout.root.clone(),
            options: overlay_options(&layout.layers, &layout.upper, &layout.work),
        }];
        ops.extend(layout.binds.iter().map(|b| MountOp::Bind {
            source: b.source.clone(),
            target: b.target.clone(),
            recursive: false,
            readonly: !b.writable,
            slave: false,
        }));
        ops.push(MountOp::Proc {
            target: PathBuf::from("/proc"),
        });
        for (dir, readonly) in [("/dev", false), ("/sys", true)] {
            ops.push(MountOp::Bind {
                source: PathBuf::from(dir),
                target: PathBuf::from(dir),
                recursive: true,
                readonly,
                slave: true,
            });
        }
        MountPlan {
            root: layout.root.clone(),
            ops,
        }
    }
}

impl MountPlan {
    /// Add the job's own cgroup2 at `target` (the host's v2 mount point,
    /// under `/sys`), after everything else: it covers part of `/sys`.
    pub fn mount_cgroup(&mut self, target: &Path) {
        self.ops.push(MountOp::Cgroup {
            target: target.to_owned(),
        });
    }
}

/// Overlayfs options for `layers` (top first) under `upper`/`work`.
///
/// overlayfs splits options at `,` and `lowerdir` at `:`, and takes `\` as the
/// escape character for both (Documentation/filesystems/overlayfs.rst), so
/// those three bytes are escaped in every path.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> OsString {
    let mut out = b"lowerdir=".to_vec();
    for (i, layer) in layers.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        out.extend(escape_overlay_path(layer.as_os_str()));
    }
    out.extend(b",upperdir=");
    out.extend(escape_overlay_path(upper.as_os_str()));
    out.extend(b",workdir=");
    out.extend(escape_overlay_path(work.as_os_str()));
    OsString::from_vec(out)
}

/// `path` with `\`, `,` and `:` backslash-escaped for overlayfs options.
pub fn escape_overlay_path(path: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
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
        }
    }

    #[test]
    fn plan_order_is_overlay_binds_proc_dev_sys() {
        let plan = MountPlan::for_chroot(&layout());
        let targets: Vec<_> = plan.ops.iter().map(|op| op.target().to_owned()).collect();
        let want: Vec<PathBuf> = [
            "/r/1/root",
            "/var/db/repos/gentoo",
            "/var/cache/binpkgs",
            "/proc",
            "/dev",
            "/sys",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(targets, want);
        assert_eq!(plan.root, PathBuf::from("/r/1/root"));
    }

    #[test]
    fn trees_are_readonly_caches_writable_sys_readonly_slave() {
        let plan = MountPlan::for_chroot(&layout());
        let flags: Vec<_> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind {
                    target,
                    recursive,
                    readonly,
                    slave,
                    ..
                } => Some((target.to_str().unwrap(), *recursive, *readonly, *slave)),
                _ => None,
            })
            .collect();
        assert_eq!(
            flags,
            vec![
                ("/var/db/repos/gentoo", false, true, false),
                ("/var/cache/binpkgs", false, false, false),
                ("/dev", true, false, true),
                ("/sys", true, true, true),
            ]
        );
    }

    #[test]
    fn the_cgroup_step_comes_after_sys() {
        let mut plan = MountPlan::for_chroot(&layout());
        plan.mount_cgroup(Path::new("/sys/fs/cgroup"));
        let n = plan.ops.len();
        assert_eq!(plan.ops[n - 2].target(), Path::new("/sys"));
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

    #[test]
    fn overlay_options_escape_backslash_comma_colon() {
        let opts = overlay_options(
            &["/a:b".into(), "/c,d".into()],
            Path::new("/u\\p"),
            Path::new("/w:,\\"),
        );
        assert_eq!(
            opts,
            r"lowerdir=/a\:b:/c\,d,upperdir=/u\\p,workdir=/w\:\,\\"
        );
    }

    #[test]
    fn escaping_keeps_non_utf8_bytes() {
        let raw = OsStr::from_bytes(b"/x\xff:y");
        assert_eq!(escape_overlay_path(raw), b"/x\xff\\:y".to_vec());
    }
}
