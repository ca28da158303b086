//! Applying a [`MountPlan`] inside the sandbox: every target resolved with
//! `openat2(RESOLVE_IN_ROOT)` below the chroot and mounted through
//! `/proc/self/fd/N`, the overlay first, then `pivot_root`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mkdirat, Mode};

use crate::error::{sys, Error, Result};
use crate::plan::{Attrs, MountOp, MountPlan};

/// Apply the plan's first part, [`MountPlan::ops`], in order, as root of the
/// host's user namespace. Every error names the mount target.
pub fn apply(plan: &MountPlan) -> Result<()> {
    apply_ops(plan, &plan.ops, &mut None)
}

/// Apply `ops`, a part of `plan.ops`, in order; `root_fd` is the chroot once
/// the overlay is mounted (by this part or an earlier one).
pub(super) fn apply_ops(
    plan: &MountPlan,
    ops: &[MountOp],
    root_fd: &mut Option<OwnedFd>,
) -> Result<()> {
    for op in ops {
        tracing::debug!(target = %op.target().display(), "mounting");
        if let MountOp::Overlay { target, options } = op {
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_os_str()),
            )
            .map_err(sys("mounting overlay on", target))?;
            let fd = nix::fcntl::open(
                target,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys("opening", target))?;
            *root_fd = Some(fd);
            continue;
        }
        let root = root_fd.as_ref().ok_or_else(no_root)?;
        apply_op(op, &Chroot::new(root, &plan.root))?;
    }
    Ok(())
}

/// Apply the plan's second part, [`MountPlan::job_ops`], in order, in the
/// job's namespaces after `pivot_root` (so `/` is the chroot).
pub fn apply_job(plan: &MountPlan) -> Result<()> {
    let slash = Path::new("/");
    let root = nix::fcntl::open(
        slash,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", slash))?;
    for op in &plan.job_ops {
        tracing::debug!(target = %op.target().display(), "mounting");
        apply_op(op, &Chroot::new(&root, slash))?;
    }
    Ok(())
}

/// The chroot a step applies to: its root directory and, for messages, the
/// path that directory has.
pub(super) struct Chroot<'a> {
    pub(super) fd: &'a OwnedFd,
    pub(super) path: &'a Path,
}

impl<'a> Chroot<'a> {
    pub(super) fn new(fd: &'a OwnedFd, path: &'a Path) -> Chroot<'a> {
        Chroot { fd, path }
    }

    /// `inside` as shown in errors: under the chroot's path.
    pub(super) fn show(&self, inside: &Path) -> PathBuf {
        self.path.join(rel(inside))
    }

    /// The directory `inside`, created as needed (see [`open_dir_in_root`]).
    pub(super) fn dir(&self, inside: &Path) -> Result<OwnedFd> {
        open_dir_in_root(self.fd, inside, self.path)
    }

    /// `inside` itself, whatever it is, without following a final symlink;
    /// `None` if it does not exist.
    pub(super) fn existing(&self, inside: &Path) -> Result<Option<OwnedFd>> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(self.fd.as_fd(), inside, how) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(sys("opening", self.show(inside))(e)),
        }
    }

    /// The directory that holds `inside` (created as needed) and its name.
    pub(super) fn parent<'p>(&self, inside: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
        match (inside.parent(), inside.file_name()) {
            (Some(parent), Some(name)) => Ok((self.dir(parent)?, name)),
            _ => Err(Error::Invalid(format!(
                "mount target {} has no parent directory",
                inside.display()
            ))),
        }
    }
}

/// One step of either part of the plan, but the overlay.
pub(super) fn apply_op(op: &MountOp, chroot: &Chroot) -> Result<()> {
    match op {
        MountOp::Overlay { .. } => Err(Error::Invalid(
            "the overlay can only be the plan's first step".into(),
        )),
        MountOp::Bind {
            source,
            target,
            recursive,
            attrs,
            slave,
        } => bind(chroot, source, target, *recursive, *attrs, *slave),
        MountOp::BindNode { source, target } => bind_node(chroot, source, target),
        MountOp::Proc { target } => {
            let dir = chroot.dir(target)?;
            mount(
                Some("proc"),
                &fd_path(&dir),
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(sys("mounting proc on", chroot.show(target)))
        }
        MountOp::Tmpfs {
            target,
            mode,
            attrs,
        } => {
            let dir = chroot.dir(target)?;
            let options = format!("mode={mode:o}");
            mount(
                Some("tmpfs"),
                &fd_path(&dir),
                Some("tmpfs"),
                ms_flags(*attrs),
                Some(options.as_str()),
            )
            .map_err(sys("mounting tmpfs on", chroot.show(target)))
        }
        MountOp::Devpts { target } => {
            let dir = chroot.dir(target)?;
            mount(
                Some("devpts"),
                &fd_path(&dir),
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=620"),
            )
            .map_err(sys("mounting devpts on", chroot.show(target)))
        }
        MountOp::Mqueue { target } => mount_mqueue(chroot, target),
        MountOp::Symlink { target, points_to } => {
            let (parent, name) = chroot.parent(target)?;
            nix::unistd::symlinkat(points_to.as_path(), parent.as_fd(), name)
                .map_err(sys("creating symlink", chroot.show(target)))
        }
        MountOp::ReadOnlyPath { target } => make_read_only(chroot, target),
        MountOp::Mask { target } => mask(chroot, target),
        MountOp::TmpfsOver { target, size } => tmpfs_over(chroot, target, *size),
        MountOp::Cgroup { target } => mount_cgroup(chroot, target),
    }
}

/// [`MountOp::Bind`]: bind `source` on the directory `target`, then set the
/// attributes on the new mount.
pub(super) fn bind(
    chroot: &Chroot,
    source: &Path,
    target: &Path,
    recursive: bool,
    attrs: Attrs,
    slave: bool,
) -> Result<()> {
    let shown = chroot.show(target);
    let dir = chroot.dir(target)?;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(source),
        &fd_path(&dir),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(sys("binding", &shown))?;
    // `dir` still names the directory *under* the new mount; the
    // attributes must go on the mount itself.
    let top = chroot.dir(target)?;
    set_mount_attrs(&top, recursive, attrs, slave)
        .map_err(sys("setting mount attributes of", &shown))
}

/// [`MountOp::BindNode`]: create the file `target` and bind `source` on it.
pub(super) fn bind_node(chroot: &Chroot, source: &Path, target: &Path) -> Result<()> {
    let shown = chroot.show(target);
    let (parent, name) = chroot.parent(target)?;
    let file = nix::fcntl::openat(
        parent.as_fd(),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o444),
    )
    .map_err(sys("creating", &shown))?;
    mount(
        Some(source),
        &fd_path(&file),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("binding", &shown))
}

/// [`MountOp::Mqueue`], unless the kernel has no POSIX message queues.
pub(super) fn mount_mqueue(chroot: &Chroot, target: &Path) -> Result<()> {
    let dir = chroot.dir(target)?;
    match mount(
        Some("mqueue"),
        &fd_path(&dir),
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        // A kernel without POSIX message queues: nothing to mount.
        Err(Errno::ENODEV) => Ok(()),
        done => done.map_err(sys("mounting mqueue on", chroot.show(target))),
    }
}

/// [`MountOp::ReadOnlyPath`]: bind `target` on itself and make that mount
/// read-only; nothing if this kernel has no such path.
pub(super) fn make_read_only(chroot: &Chroot, target: &Path) -> Result<()> {
    let shown = chroot.show(target);
    let Some(fd) = chroot.existing(target)? else {
        tracing::debug!(target = %shown.display(), "not on this kernel: not made read-only");
        return Ok(());
    };
    let at = fd_path(&fd);
    mount(
        Some(&at),
        &at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("binding", &shown))?;
    let top = chroot
        .existing(target)?
        .ok_or_else(|| sys("reopening", &shown)(Errno::ENOENT))?;
    let ro = Attrs {
        readonly: true,
        ..Attrs::default()
    };
    set_mount_attrs(&top, true, ro, false).map_err(sys("making read-only", &shown))
}

/// [`MountOp::Mask`]: an empty read-only tmpfs over a directory, `/dev/null`
/// over a file; nothing if this kernel has no such path.
pub(super) fn mask(chroot: &Chroot, target: &Path) -> Result<()> {
    let shown = chroot.show(target);
    let Some(fd) = chroot.existing(target)? else {
        tracing::debug!(target = %shown.display(), "not on this kernel: not masked");
        return Ok(());
    };
    let st = nix::sys::stat::fstat(&fd).map_err(sys("inspecting", &shown))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            Some("tmpfs"),
            &fd_path(&fd),
            Some("tmpfs"),
            flags,
            Some("mode=0555"),
        )
    } else {
        mount(
            Some("/dev/null"),
            &fd_path(&fd),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }
    .map_err(sys("masking", &shown))
}

/// [`MountOp::TmpfsOver`]: an empty tmpfs with the covered directory's owner
/// and mode.
pub(super) fn tmpfs_over(chroot: &Chroot, target: &Path, size: Option<u64>) -> Result<()> {
    let shown = chroot.show(target);
    let dir = chroot.dir(target)?;
    // The covered directory's owner and mode, so the build directory
    // keeps the stage's permissions (portage:portage 0775 and the
    // like) with nothing of the stage's contents.
    let st = nix::sys::stat::fstat(&dir).map_err(sys("inspecting", &shown))?;
    let mut options = format!(
        "mode={:o},uid={},gid={}",
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid
    );
    if let Some(bytes) = size {
        options.push_str(&format!(",size={bytes}"));
    }
    mount(
        Some("tmpfs"),
        &fd_path(&dir),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(sys("mounting tmpfs on", &shown))
}

/// [`MountOp::Cgroup`]: this namespace's own cgroup2 in place of the host's.
pub(super) fn mount_cgroup(chroot: &Chroot, target: &Path) -> Result<()> {
    let shown = chroot.show(target);
    // The host's cgroup2, bound in with /sys, is the same
    // superblock, and the kernel refuses a filesystem on its own
    // root (EBUSY, do_add_mount): detach it first, in this
    // namespace only (/sys is a slave).
    let dir = chroot.dir(target)?;
    match umount2(&fd_path(&dir), MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(sys("detaching the host's cgroup2 from", &shown)(e)),
    }
    let dir = chroot.dir(target)?;
    mount(
        Some("cgroup2"),
        &fd_path(&dir),
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mounting cgroup2 on", &shown))
}

pub(super) fn no_root() -> Error {
    Error::Invalid("mount plan does not start with the overlay".into())
}

/// Flags of a fresh mount for `attrs`.
pub(super) fn ms_flags(attrs: Attrs) -> MsFlags {
    let mut flags = MsFlags::empty();
    for (on, flag) in [
        (attrs.readonly, MsFlags::MS_RDONLY),
        (attrs.nosuid, MsFlags::MS_NOSUID),
        (attrs.nodev, MsFlags::MS_NODEV),
        (attrs.noexec, MsFlags::MS_NOEXEC),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}

/// Set `attrs` (and slave propagation) on the mount whose root `fd` is, and
/// with `recursive` on every mount below it, in one `mount_setattr(2)`.
///
/// Unlike a `MS_REMOUNT|MS_BIND` remount (bubblewrap's way) it changes only
/// the flags it is given, so none of the flags already set need repeating,
/// and it reaches the submounts (`/sys/fs/cgroup/*`), which a remount never
/// does. Called through `syscall(2)`: the libc crate has the syscall number
/// and `struct mount_attr` but no wrapper (glibc has one only since 2.36).
pub(super) fn set_mount_attrs(
    fd: &OwnedFd,
    recursive: bool,
    attrs: Attrs,
    slave: bool,
) -> nix::Result<()> {
    let mut set = 0;
    for (on, attr) in [
        (attrs.readonly, libc::MOUNT_ATTR_RDONLY),
        (attrs.nosuid, libc::MOUNT_ATTR_NOSUID),
        (attrs.nodev, libc::MOUNT_ATTR_NODEV),
        (attrs.noexec, libc::MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            set |= attr;
        }
    }
    if set == 0 && !slave {
        return Ok(());
    }
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: if slave { libc::MS_SLAVE } else { 0 },
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size_of::<mount_attr>()` bytes from
    // `attr`, which lives across the call, and the empty path is a valid
    // NUL-terminated string; `fd` is an open descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(rc).map(drop)
}

pub(super) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `target` without its leading `/`.
pub(super) fn rel(target: &Path) -> &Path {
    target.strip_prefix("/").unwrap_or(target)
}

/// Open (creating as needed, mode 0755) the directory `inside` of the chroot
/// whose root is `root`, resolving every symlink as if `root` were `/`.
pub fn open_dir_in_root(root: &OwnedFd, inside: &Path, root_path: &Path) -> Result<OwnedFd> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    let mut prefix = PathBuf::from("/");
    let mut parent = openat2(root.as_fd(), "/", how()).map_err(sys("opening", root_path))?;
    for comp in inside.components() {
        let name: &OsStr = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Invalid(format!(
                    "mount target {} is not a plain absolute path",
                    inside.display()
                )))
            }
        };
        prefix.push(name);
        let shown = root_path.join(rel(&prefix));
        parent = match openat2(root.as_fd(), &prefix, how()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(sys("creating", shown)(e)),
                }
                openat2(root.as_fd(), &prefix, how()).map_err(sys("opening", shown))?
            }
            Err(e) => return Err(sys("opening", shown)(e)),
        };
    }
    Ok(parent)
}

/// `pivot_root` into `root` and detach the old root, so the job sees nothing
/// of the host (the runc way: pivot with `.` as both arguments).
pub(super) fn enter_root(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(sys("entering", root))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching old root from", root))?;
        }
        // pivot_root refuses when / is the initramfs rootfs: chroot instead.
        // The kernel then refuses the job's user namespace too (a chrooted
        // process may not create one, user_namespaces(7)), so the job never
        // starts without its isolation.
        Err(Errno::EINVAL) => nix::unistd::chroot(".").map_err(sys("chrooting into", root))?,
        Err(e) => return Err(sys("pivoting into", root)(e)),
    }
    nix::unistd::chdir("/").map_err(sys("entering", "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_inside_the_root_and_are_created() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // Absolute and relative symlinks that would leave the root on the host.
        std::os::unix::fs::symlink(outside.path(), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.path().join("up")).unwrap();
        let fd = nix::fcntl::open(
            root.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let inside_abs = outside.path().strip_prefix("/").unwrap();
        std::fs::create_dir_all(root.path().join(inside_abs)).unwrap();
        open_dir_in_root(&fd, Path::new("/abs/x/y"), root.path()).unwrap();
        open_dir_in_root(&fd, Path::new("/up/z"), root.path()).unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(root.path().join(inside_abs).join("x/y").is_dir());
        assert!(root.path().join("z").is_dir());
        let err = open_dir_in_root(&fd, Path::new("/a/../b"), root.path()).unwrap_err();
        assert!(
            err.to_string().contains("not a plain absolute path"),
            "{err}"
        );
    }
}
