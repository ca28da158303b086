//! The sandbox: applies a [`MountPlan`] in fresh namespaces and runs the job's
//! shell in the resulting chroot.
//!
//! It runs in `portroot internal sandbox SPEC`, a single-threaded re-exec of
//! the binary started by a pool worker, so that no namespace or mount work ever
//! happens in the threaded runner. The steps, in order:
//!
//! 1. `unshare(NEWNS|NEWPID|NEWUTS|NEWIPC [|NEWNET])` and make `/`
//!    recursively private, so nothing mounted below reaches the run's (or the
//!    host's) namespace, and everything vanishes when the last process exits;
//! 2. `fork`: the child is PID 1 of the new PID namespace. It dies with the
//!    helper (`PR_SET_PDEATHSIG`), and every job process dies with it. The
//!    helper puts it in the job's cgroups (`cgroup.rs`) meanwhile: moving a
//!    process between cgroups waits for an RCU grace period (the kernel's
//!    `cgroup_threadgroup_rwsem`, several milliseconds on a busy machine),
//!    which so overlaps PID 1's mounts instead of preceding them;
//! 3. PID 1 brings `lo` up (`--network none`), sets the hostname, applies the
//!    plan's first part (overlay → trees and caches → proc → dev → sys, see
//!    `plan.rs`), reads the host's `resolv.conf`, `pivot_root`s into the
//!    chroot and detaches the old root, and writes the portage
//!    configuration; once the helper says it is in the job's cgroups, it
//!    `unshare(NEWCGROUP)`s (the groups become the namespace's roots), moves
//!    into the v2 group's leaf and mounts the job's cgroup2;
//! 4. PID 1 enters the job's user namespace: `unshare(CLONE_NEWUSER)`, the
//!    helper (still root of the host's namespace) maps every uid and gid onto
//!    itself, then `unshare(CLONE_NEWNS)`. In that mount namespace the kernel
//!    locks every mount made so far, and it checks every host-wide capability
//!    (clock, modules, reboot, the host's network, remounting a host
//!    filesystem) against the initial namespace, where the job has none;
//!    while the job keeps full capabilities over namespaces it creates itself,
//!    which is what portage's ipc-, network-, pid- and mount-sandbox need.
//!    PID 1 then applies the plan's `/proc` part and drops from the bounding
//!    set the capabilities no build needs ([`DROPPED_CAPS`]);
//! 5. PID 1 forks the job's `/bin/bash --login` with an environment of just
//!    `HOME` and `TERM`, and reaps every orphan until the job's shell exits.
//!    A batch job has no controlling terminal (the helper drops it first) and
//!    its own process group, but stays in the caller's session and so in its
//!    scheduler autogroup, with the tree mounts' daemon threads.
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
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupSpec};
use crate::conf::ChrootConf;
use crate::error::{io, sys, Error, Result};
use crate::plan::{Attrs, ChrootLayout, MountOp, MountPlan};

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
    unshare(flags).map_err(|source| Error::Proc {
        what: "creating namespaces",
        source,
    })?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making private", "/"))?;
    // Opened now: once the init has pivoted, this process's `/proc` is the
    // job's, where the init's pid as we know it means nothing.
    let proc_dir = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", "/proc"))?;
    // The same for the job's cgroups.
    let groups = match &spec.cgroup {
        Some(cg) => Some(cgroup::open_procs(&cg.enter)?),
        None => None,
    };
    let (from_init, to_helper) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
    let (from_helper, to_init) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;

    // SAFETY: the helper is single-threaded (a fresh exec of our binary that
    // started no threads), so the child may allocate and run ordinary code.
    match unsafe { fork() }.map_err(|source| Error::Proc {
        what: "forking the sandbox init",
        source,
    })? {
        ForkResult::Child => {
            drop((proc_dir, from_init, to_init, groups));
            let ids = IdHandshake {
                to_helper,
                from_helper,
            };
            let code = match init(spec, ids) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("portroot sandbox: {}", chain(&err));
                    SETUP_FAILED
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop((to_helper, from_helper));
            if let Some(groups) = groups {
                // On failure the init reads end-of-file and gives up.
                if let Err(e) = place_init(groups, child, &to_init) {
                    drop((from_init, to_init));
                    wait_exit(child)?;
                    return Err(e);
                }
            }
            let mapped = map_ids(&proc_dir, child, from_init, to_init);
            let code = wait_exit(child)?;
            mapped.map(|()| code)
        }
    }
}

/// Put the init `child` in the job's cgroups `groups` (which become the
/// roots of its cgroup namespace) and tell it so.
fn place_init(groups: Vec<(PathBuf, std::fs::File)>, child: Pid, to_init: &OwnedFd) -> Result<()> {
    cgroup::place(groups, child.as_raw())?;
    nix::unistd::write(to_init, b"c").map_err(|source| Error::Proc {
        what: "telling the sandbox init it is in the job's cgroups",
        source,
    })?;
    Ok(())
}

fn pipe_error(source: Errno) -> Error {
    Error::Proc {
        what: "creating a pipe to the sandbox init",
        source,
    }
}

/// The uid and gid map of every job: each id onto itself, over the whole
/// range, as the initial namespace's own `/proc/self/uid_map` reads. So every
/// file keeps its owner (the stage's, portage's 250, whatever a distfile or
/// package carries) and nothing shows as the overflow id; the namespace only
/// takes away what the kernel checks against the initial namespace.
pub const ID_MAP: &str = "0 0 4294967295\n";

/// The init's side of the id mapping: it says when it is in its new user
/// namespace, and waits until the helper has written the maps (which only a
/// process of the parent namespace may do for more than one id,
/// user_namespaces(7)).
struct IdHandshake {
    to_helper: OwnedFd,
    from_helper: OwnedFd,
}

impl IdHandshake {
    /// Wait until the helper has put this process in the job's cgroups.
    fn wait_for_cgroups(&self) -> Result<()> {
        self.wait_for(b'c', "the helper did not put the job in its cgroups")
    }

    /// Read the helper's one-byte answer `want`; end-of-file means the
    /// helper gave up (`failed` says on what).
    fn wait_for(&self, want: u8, failed: &str) -> Result<()> {
        let mut answer = [0u8; 1];
        loop {
            match nix::unistd::read(&self.from_helper, &mut answer) {
                Ok(1) if answer[0] == want => return Ok(()),
                Ok(_) => return Err(Error::Invalid(failed.into())),
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Proc {
                        what: "waiting for the sandbox helper",
                        source,
                    })
                }
            }
        }
    }

    /// `unshare(CLONE_NEWUSER)`, have the helper map the ids, then
    /// `unshare(CLONE_NEWNS)`: the mount namespace, owned by the new user
    /// namespace, holds every mount made so far locked.
    fn enter_user_namespace(self) -> Result<()> {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|source| Error::Proc {
            what: "creating the job's user namespace",
            source,
        })?;
        nix::unistd::write(&self.to_helper, b"u").map_err(|source| Error::Proc {
            what: "asking the helper to map the job's ids",
            source,
        })?;
        self.wait_for(b'm', "the helper did not map the job's user and group ids")?;
        unshare(CloneFlags::CLONE_NEWNS).map_err(|source| Error::Proc {
            what: "creating the job's mount namespace",
            source,
        })
    }
}

/// The helper's side: when the init asks, write its uid and gid maps
/// ([`ID_MAP`]) through `proc_dir` (the helper's `/proc`) and answer. If the
/// init ends before asking (its setup failed), there is nothing to do.
fn map_ids(proc_dir: &OwnedFd, init: Pid, from_init: OwnedFd, to_init: OwnedFd) -> Result<()> {
    let mut asked = [0u8; 1];
    loop {
        match nix::unistd::read(&from_init, &mut asked) {
            Ok(0) => return Ok(()),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(source) => {
                return Err(Error::Proc {
                    what: "waiting for the sandbox init",
                    source,
                })
            }
        }
    }
    for file in ["uid_map", "gid_map"] {
        let rel = PathBuf::from(format!("{init}/{file}"));
        let shown = Path::new("/proc").join(&rel);
        let fd = nix::fcntl::openat(
            proc_dir.as_fd(),
            &rel,
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys("opening", &shown))?;
        // The kernel takes a map in one write(2) only.
        let n = nix::unistd::write(&fd, ID_MAP.as_bytes()).map_err(sys("writing", &shown))?;
        if n != ID_MAP.len() {
            return Err(sys("writing", &shown)(Errno::EIO));
        }
    }
    nix::unistd::write(&to_init, b"m").map_err(|source| Error::Proc {
        what: "telling the sandbox init its ids are mapped",
        source,
    })?;
    Ok(())
}

/// Capabilities taken out of the job's bounding set (numbers from
/// linux/capability.h): no build loads modules, does raw I/O, sets the clock,
/// reboots, reads the kernel log, administers an LSM or loads BPF or perf
/// programs. In the job's user namespace the kernel would refuse most of them
/// anyway (it checks them against the initial namespace); dropping them also
/// keeps setuid programs in the job from ever holding them.
pub const DROPPED_CAPS: [(libc::c_int, &str); 9] = [
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (22, "CAP_SYS_BOOT"),
    (25, "CAP_SYS_TIME"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
    (34, "CAP_SYSLOG"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// Drop [`DROPPED_CAPS`] from the bounding set. Must run inside the job's
/// user namespace: creating one resets the bounding set to full.
fn drop_bounding_caps() -> Result<()> {
    for (cap, name) in DROPPED_CAPS {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a capability number and changes
        // only this thread's bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match Errno::result(rc) {
            Ok(_) => {}
            // An older kernel that does not know this capability.
            Err(Errno::EINVAL) => tracing::debug!(cap = name, "capability unknown to the kernel"),
            Err(source) => {
                return Err(Error::Proc {
                    what: "dropping capabilities from the bounding set",
                    source,
                })
            }
        }
    }
    Ok(())
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
fn init(spec: &SandboxSpec, ids: IdHandshake) -> Result<i32> {
    set_up_process(spec)?;
    let mut plan = MountPlan::for_chroot(&spec.layout);
    let before_cgroup = plan.ops.len();
    if let Some(at) = spec.cgroup.as_ref().and_then(|c| c.mount.as_deref()) {
        plan.mount_cgroup(at);
    }
    let mut root = None;
    apply_ops(&plan, &plan.ops[..before_cgroup], &mut root)?;
    let mut conf = spec.conf.clone();
    if conf.resolv_conf.is_none() {
        // Missing on the host is fine (a build box without DNS): keep the stage's.
        conf.resolv_conf = std::fs::read("/etc/resolv.conf").ok();
    }
    // v2's leaf, opened while its host path is still in reach.
    let leaf = match &spec.cgroup {
        Some(cg) => Some(cgroup::open_procs(&cg.then)?),
        None => None,
    };
    // Still before the cgroups: the helper's move may be waiting for the
    // kernel meanwhile. The cgroup2 mount below goes through `root`.
    enter_root(&plan.root)?;
    conf.write(Path::new("/"))?;
    if let Some(leaf) = leaf {
        ids.wait_for_cgroups()?;
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|source| Error::Proc {
            what: "creating the job's cgroup namespace",
            source,
        })?;
        // Inside the namespace: v2's leaf below its root.
        cgroup::join_opened(leaf)?;
    }
    apply_ops(&plan, &plan.ops[before_cgroup..], &mut root)?;
    ids.enter_user_namespace()?;
    apply_job(&plan)?;
    drop_bounding_caps()?;

    exec_shell(spec)
}

/// This process's own settings: die with the helper, the loopback of an
/// isolated network, the job's hostname.
fn set_up_process(spec: &SandboxSpec) -> Result<()> {
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
    Ok(())
}

/// Fork the job's shell (`/bin/bash`) and reap until it ends: its exit status.
fn exec_shell(spec: &SandboxSpec) -> Result<i32> {
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

/// Apply the plan's first part, [`MountPlan::ops`], in order, as root of the
/// host's user namespace. Every error names the mount target.
pub fn apply(plan: &MountPlan) -> Result<()> {
    apply_ops(plan, &plan.ops, &mut None)
}

/// Apply `ops`, a part of `plan.ops`, in order; `root_fd` is the chroot once
/// the overlay is mounted (by this part or an earlier one).
fn apply_ops(plan: &MountPlan, ops: &[MountOp], root_fd: &mut Option<OwnedFd>) -> Result<()> {
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
struct Chroot<'a> {
    fd: &'a OwnedFd,
    path: &'a Path,
}

impl<'a> Chroot<'a> {
    fn new(fd: &'a OwnedFd, path: &'a Path) -> Chroot<'a> {
        Chroot { fd, path }
    }

    /// `inside` as shown in errors: under the chroot's path.
    fn show(&self, inside: &Path) -> PathBuf {
        self.path.join(rel(inside))
    }

    /// The directory `inside`, created as needed (see [`open_dir_in_root`]).
    fn dir(&self, inside: &Path) -> Result<OwnedFd> {
        open_dir_in_root(self.fd, inside, self.path)
    }

    /// `inside` itself, whatever it is, without following a final symlink;
    /// `None` if it does not exist.
    fn existing(&self, inside: &Path) -> Result<Option<OwnedFd>> {
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
    fn parent<'p>(&self, inside: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
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
fn apply_op(op: &MountOp, chroot: &Chroot) -> Result<()> {
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
fn bind(
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
fn bind_node(chroot: &Chroot, source: &Path, target: &Path) -> Result<()> {
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
fn mount_mqueue(chroot: &Chroot, target: &Path) -> Result<()> {
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
fn make_read_only(chroot: &Chroot, target: &Path) -> Result<()> {
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
fn mask(chroot: &Chroot, target: &Path) -> Result<()> {
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
fn tmpfs_over(chroot: &Chroot, target: &Path, size: Option<u64>) -> Result<()> {
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
fn mount_cgroup(chroot: &Chroot, target: &Path) -> Result<()> {
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

fn no_root() -> Error {
    Error::Invalid("mount plan does not start with the overlay".into())
}

/// Flags of a fresh mount for `attrs`.
fn ms_flags(attrs: Attrs) -> MsFlags {
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
fn set_mount_attrs(fd: &OwnedFd, recursive: bool, attrs: Attrs, slave: bool) -> nix::Result<()> {
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
        // The kernel then refuses the job's user namespace too (a chrooted
        // process may not create one, user_namespaces(7)), so the job never
        // starts without its isolation.
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
                tmpfs: vec![],
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
