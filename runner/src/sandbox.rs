//! The sandbox: applies a [`MountPlan`] in fresh namespaces and runs the job's
//! shell in the resulting chroot.
//!
//! It runs in `portroot internal sandbox SPEC`, a single-threaded re-exec of
//! the binary started by a pool worker, so that no namespace or mount work ever
//! happens in the threaded runner. The steps, in order:
//!
//! 1. join the job's cgroup (`cgroup.rs`), `unshare(NEWNS|NEWPID|NEWUTS|
//!    NEWIPC [|NEWNET] [|NEWCGROUP])`, move into the group's leaf, and make `/` recursively
//!    private, so nothing mounted below reaches the run's (or the host's)
//!    namespace, and everything vanishes when the last process exits;
//! 2. `fork`: the child is PID 1 of the new PID namespace. It dies with the
//!    helper (`PR_SET_PDEATHSIG`), and every job process dies with it;
//! 3. PID 1 brings `lo` up (`--network none`), sets the hostname, applies the
//!    plan (overlay → trees and caches → proc → dev → sys → the job's cgroup2), reads the host's
//!    `resolv.conf`, `pivot_root`s into the chroot and detaches the old root,
//!    writes the portage configuration, then forks the job's
//!    `/bin/bash --login` with an environment of just `HOME` and `TERM`, and
//!    reaps every orphan until the job's shell exits. A batch job has no
//!    controlling terminal (the helper drops it first) and its own process
//!    group, but stays in the caller's session and so in its scheduler
//!    autogroup, with the tree mounts' daemon threads.
//!
//! Mount targets inside the chroot are resolved with `openat2(RESOLVE_IN_ROOT)`
//! and mounted through `/proc/self/fd/N`, so a symlink in the stage (say
//! `/var/db/repos -> /srv`) can never make a bind land on the host.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{mkdirat, Mode};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupSpec};
use crate::conf::ChrootConf;
use crate::error::{io, sys, Error, Result};
use crate::plan::{ChrootLayout, MountOp, MountPlan};

/// Exit status of the helper when the sandbox could not be set up (the job
/// never ran); the reason is on the job's log. Same convention as `env`/`chroot`.
pub const SETUP_FAILED: i32 = 125;

/// Network namespace choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Share the host's network (the seed's way).
    Host,
    /// A fresh network namespace with only loopback up.
    None,
}

/// What the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// `bash --login -c SCRIPT`.
    Script(String),
    /// An interactive `bash --login` on the caller's terminal.
    Interactive,
}

/// Everything the helper needs, written by the runner as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The job's hostname (its name).
    pub hostname: String,
    /// Layers, upper/work, root and binds.
    pub layout: ChrootLayout,
    /// Portage configuration written inside.
    pub conf: ChrootConf,
    /// Host network or loopback only.
    pub network: Network,
    /// The shell's command.
    pub command: Command,
    /// `TERM` passed through, as the seed's `env -i TERM=$TERM`.
    pub term: Option<String>,
    /// The job's cgroup, joined before the namespaces are made; `None`
    /// runs the job in the helper's cgroup, without a cgroup namespace.
    #[serde(default)]
    pub cgroup: Option<CgroupSpec>,
}

impl SandboxSpec {
    /// Read a spec written by [`SandboxSpec::save`].
    pub fn load(path: &Path) -> Result<SandboxSpec> {
        let text = std::fs::read(path).map_err(io("reading", path))?;
        serde_json::from_slice(&text).map_err(|source| Error::Json {
            what: "parsing sandbox spec",
            path: path.to_owned(),
            source,
        })
    }

    /// Write the spec for the helper.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            what: "encoding sandbox spec",
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, text).map_err(io("writing", path))
    }
}

/// Run the sandbox described by `spec` and return the job's exit status
/// (`128 + signal` if killed). Must be called from a single-threaded process:
/// it forks and the children use the heap.
pub fn run(spec: &SandboxSpec) -> Result<i32> {
    if spec.command != Command::Interactive {
        drop_controlling_terminal();
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Some(cg) = &spec.cgroup {
        // The groups joined now become the roots of the job's cgroup
        // namespace; the move into the leaf below happens inside it.
        cgroup::join(&cg.enter)?;
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    unshare(flags).map_err(|source| Error::Proc {
        what: "creating namespaces",
        source,
    })?;
    if let Some(cg) = &spec.cgroup {
        cgroup::join(&cg.then)?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making private", "/"))?;

    // SAFETY: the helper is single-threaded (a fresh exec of our binary that
    // started no threads), so the child may allocate and run ordinary code.
    match unsafe { fork() }.map_err(|source| Error::Proc {
        what: "forking the sandbox init",
        source,
    })? {
        ForkResult::Child => {
            let code = match init(spec) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("portroot sandbox: {}", chain(&err));
                    SETUP_FAILED
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => wait_exit(child),
    }
}

/// Give up the controlling terminal, if any, without leaving the session
/// (see the job's fork in [`init`]): then nothing the sandbox starts can open
/// `/dev/tty` or get the terminal's signals. Only for a process that does not
/// lead its session, where TIOCNOTTY detaches just this process; a leader's
/// would hang up the terminal's foreground group.
fn drop_controlling_terminal() {
    let me = nix::unistd::getpid();
    if nix::unistd::getsid(None).is_ok_and(|sid| sid == me) {
        return;
    }
    let Ok(tty) = nix::fcntl::open(
        "/dev/tty",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        // No controlling terminal: nothing to drop.
        return;
    };
    // SAFETY: TIOCNOTTY takes no argument; `tty` is an open terminal.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCNOTTY) };
}

/// `err` and its sources joined with `: `, as `anyhow`'s `{:#}` would.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

fn wait_exit(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(Error::Proc {
                    what: "waiting for the sandbox init",
                    source,
                })
            }
        }
    }
}

/// PID 1 of the job's namespaces: set up, start the shell, reap.
fn init(spec: &SandboxSpec) -> Result<i32> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(Error::Proc {
            what: "setting the parent-death signal",
            source: Errno::last(),
        });
    }
    if spec.network == Network::None {
        loopback_up()?;
    }
    nix::unistd::sethostname(&spec.hostname).map_err(|source| Error::Proc {
        what: "setting the hostname",
        source,
    })?;
    let mut plan = MountPlan::for_chroot(&spec.layout);
    if let Some(at) = spec.cgroup.as_ref().and_then(|c| c.mount.as_deref()) {
        plan.mount_cgroup(at);
    }
    apply(&plan)?;

    let mut conf = spec.conf.clone();
    if conf.resolv_conf.is_none() {
        // Missing on the host is fine (a build box without DNS): keep the stage's.
        conf.resolv_conf = std::fs::read("/etc/resolv.conf").ok();
    }
    enter_root(&plan.root)?;
    conf.write(Path::new("/"))?;

    let shell = Path::new("/bin/bash");
    if !shell.exists() {
        return Err(Error::Invalid("no /bin/bash in the stage".into()));
    }
    let argv = shell_argv(&spec.command);
    let mut envp = vec![cstr(b"HOME=/root")];
    if let Some(term) = &spec.term {
        envp.push(cstr(format!("TERM={term}").as_bytes()));
    }
    let path = cstr(b"/bin/bash");

    // SAFETY: still single-threaded; the child only execs.
    match unsafe { fork() }.map_err(|source| Error::Proc {
        what: "forking the job shell",
        source,
    })? {
        ForkResult::Child => {
            if spec.command != Command::Interactive {
                // A batch job has no controlling terminal (dropped by the
                // helper) and its own process group, out of the terminal's
                // foreground group; but it stays in the caller's session: a
                // new session is a new scheduler autogroup, and a reader in
                // another autogroup than the tree mount's daemon threads is
                // moved to the idle CPU at nearly every FUSE reply.
                let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            }
            let err = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
            eprintln!("portroot sandbox: executing /bin/bash: {err}");
            std::process::exit(127);
        }
        ForkResult::Parent { child } => reap(child),
    }
}

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).unwrap_or_else(|_| CString::from(c"portroot-invalid-nul"))
}

/// `argv` of the job shell.
fn shell_argv(command: &Command) -> Vec<CString> {
    let mut argv = vec![cstr(b"bash"), cstr(b"--login")];
    if let Command::Script(script) = command {
        argv.push(cstr(b"-c"));
        argv.push(cstr(script.as_bytes()));
    }
    argv
}

/// Reap every process of the namespace until `main` exits; return its status.
fn reap(main: Pid) -> Result<i32> {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => return Ok(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => return Ok(128 + sig as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(Error::Proc {
                    what: "reaping job processes",
                    source,
                })
            }
        }
    }
}

/// Apply `plan` in order. Every error names the mount target.
pub fn apply(plan: &MountPlan) -> Result<()> {
    let mut root_fd: Option<OwnedFd> = None;
    for op in &plan.ops {
        tracing::debug!(target = %op.target().display(), "mounting");
        match op {
            MountOp::Overlay { target, options } => {
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
                root_fd = Some(fd);
            }
            MountOp::Bind {
                source,
                target,
                recursive,
                readonly,
                slave,
            } => {
                let root = root_fd.as_ref().ok_or_else(no_root)?;
                let dir = open_dir_in_root(root, target, &plan.root)?;
                let at = fd_path(&dir);
                let mut flags = MsFlags::MS_BIND;
                if *recursive {
                    flags |= MsFlags::MS_REC;
                }
                mount(Some(source), &at, None::<&str>, flags, None::<&str>)
                    .map_err(sys("binding", plan.root.join(rel(target))))?;
                // `dir` still names the directory *under* the new mount;
                // propagation and remount must act on the mount itself.
                let top = open_dir_in_root(root, target, &plan.root)?;
                let at = fd_path(&top);
                if *slave {
                    mount(
                        None::<&str>,
                        &at,
                        None::<&str>,
                        MsFlags::MS_SLAVE | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .map_err(sys("making slave", plan.root.join(rel(target))))?;
                }
                if *readonly {
                    remount_readonly(&at, source)
                        .map_err(sys("remounting read-only", plan.root.join(rel(target))))?;
                }
            }
            MountOp::Proc { target } => {
                let root = root_fd.as_ref().ok_or_else(no_root)?;
                let dir = open_dir_in_root(root, target, &plan.root)?;
                mount(
                    Some("proc"),
                    &fd_path(&dir),
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(sys("mounting proc on", plan.root.join(rel(target))))?;
            }
            MountOp::Cgroup { target } => {
                let root = root_fd.as_ref().ok_or_else(no_root)?;
                let shown = plan.root.join(rel(target));
                // The host's cgroup2, bound in with /sys, is the same
                // superblock, and the kernel refuses a filesystem on its own
                // root (EBUSY, do_add_mount): detach it first, in this
                // namespace only (/sys is a slave).
                let dir = open_dir_in_root(root, target, &plan.root)?;
                match umount2(&fd_path(&dir), MntFlags::MNT_DETACH) {
                    Ok(()) | Err(Errno::EINVAL) => {}
                    Err(e) => return Err(sys("detaching the host's cgroup2 from", shown)(e)),
                }
                let dir = open_dir_in_root(root, target, &plan.root)?;
                mount(
                    Some("cgroup2"),
                    &fd_path(&dir),
                    Some("cgroup2"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(sys("mounting cgroup2 on", plan.root.join(rel(target))))?;
            }
        }
    }
    Ok(())
}

fn no_root() -> Error {
    Error::Invalid("mount plan does not start with the overlay".into())
}

/// A read-only bind needs a second mount call; it must repeat the flags the
/// source already has (nosuid, nodev, ...) or the kernel refuses or clears
/// them (bubblewrap's `bind_mount`).
fn remount_readonly(at: &Path, source: &Path) -> nix::Result<()> {
    let st = statvfs(source)?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (have, set) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(have) {
            flags |= set;
        }
    }
    mount(None::<&str>, at, None::<&str>, flags, None::<&str>)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `target` without its leading `/`.
fn rel(target: &Path) -> &Path {
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
fn enter_root(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(sys("entering", root))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching old root from", root))?;
        }
        // pivot_root refuses when / is the initramfs rootfs: chroot instead.
        Err(Errno::EINVAL) => nix::unistd::chroot(".").map_err(sys("chrooting into", root))?,
        Err(e) => return Err(sys("pivoting into", root)(e)),
    }
    nix::unistd::chdir("/").map_err(sys("entering", "/"))
}

/// Bring the loopback interface up in a fresh network namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::Proc {
            what: "opening a socket to configure lo",
            source: Errno::last(),
        });
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `req`, which lives
    // across both calls; the socket fd is valid.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Error::Proc {
                what: "reading the flags of lo",
                source: Errno::last(),
            });
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Error::Proc {
                what: "bringing lo up",
                source: Errno::last(),
            });
        }
    }
    Ok(())
}

/// Check that `rootfs` has the shell every job needs, before anything is set
/// up, so a wrong stage fails with one line instead of N failed jobs.
pub fn check_shell(rootfs: &Path) -> Result<()> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", rootfs))?;
    // Resolve as the chroot will: `/bin` is often a symlink to `usr/bin`.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    match openat2(root.as_fd(), "bin/bash", how) {
        Ok(_) => Ok(()),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Err(Error::Invalid(format!(
            "stage {} has no /bin/bash",
            rootfs.display()
        ))),
        Err(e) => Err(sys("looking for /bin/bash in", rootfs)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_argv_for_script_and_interactive() {
        let s = shell_argv(&Command::Script("echo 'a b'".into()));
        let s: Vec<_> = s.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(s, ["bash", "--login", "-c", "echo 'a b'"]);
        let i = shell_argv(&Command::Interactive);
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn spec_round_trips_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SandboxSpec {
            hostname: "job-1".into(),
            layout: ChrootLayout {
                layers: vec!["/s/rootfs".into()],
                upper: "/r/u".into(),
                work: "/r/w".into(),
                root: "/r/root".into(),
                binds: vec![],
            },
            conf: ChrootConf {
                repos: vec![],
                distdir: "/d".into(),
                pkgdir: "/p".into(),
                local_mirror: None,
                resolv_conf: None,
                features: Vec::new(),
                make_conf_lines: Vec::new(),
            },
            network: Network::None,
            command: Command::Script("true".into()),
            term: Some("xterm".into()),
            cgroup: Some(CgroupSpec {
                enter: vec!["/sys/fs/cgroup/portroot/r/1/ns".into()],
                then: vec!["/sys/fs/cgroup/portroot/r/1/ns/init".into()],
                mount: Some("/sys/fs/cgroup".into()),
            }),
        };
        let path = dir.path().join("spec.json");
        spec.save(&path).unwrap();
        assert_eq!(SandboxSpec::load(&path).unwrap(), spec);
    }

    #[test]
    fn check_shell_refuses_a_rootfs_without_bash() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_shell(dir.path()).unwrap_err().to_string();
        assert!(err.contains("has no /bin/bash"), "{err}");
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).unwrap();
        check_shell(dir.path()).unwrap();
    }

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

    #[test]
    fn error_chain_joins_sources() {
        let err = Error::Sys {
            what: "binding",
            path: "/x".into(),
            source: Errno::ENOENT,
        };
        assert_eq!(chain(&err), "binding /x: ENOENT: No such file or directory");
    }
}
