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
//! 2. the init, PID 1 of the new PID namespace, is made straight into the
//!    job's cgroups and cgroup namespace without a `cgroup.procs` move
//!    (`entry.rs`: cloned into v2's leaf, moving itself into the v1 groups
//!    through `tasks`, joining the namespace an anchor made), because each
//!    such move waits for an RCU grace period (3 to 12 ms on a 2-CPU VM).
//!    A kernel without `clone3(CLONE_INTO_CGROUP)` gets the old way: `fork`,
//!    and the helper writes the init's pid into the groups' `cgroup.procs`
//!    while the init mounts. The init dies with the helper
//!    (`PR_SET_PDEATHSIG`), and every job process dies with it;
//! 3. PID 1 brings `lo` up (`--network none`), sets the hostname, applies the
//!    plan's first part (overlay → trees and caches → proc → dev → sys, see
//!    `plan.rs`), reads the host's `resolv.conf`, `pivot_root`s into the
//!    chroot and detaches the old root, and writes the portage
//!    configuration; then (the old way) it `unshare(NEWCGROUP)`s and moves
//!    into the v2 group's leaf; it mounts the job's cgroup2;
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

mod entry;
mod ids;
mod mounts;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use self::entry::Entry;
use self::ids::{drop_bounding_caps, map_ids, IdHandshake};
pub use self::ids::{DROPPED_CAPS, ID_MAP};
pub use self::mounts::{apply, apply_job, open_dir_in_root};
use self::mounts::{apply_ops, enter_root};
use crate::cgroup::{self, CgroupSpec};
use crate::conf::ChrootConf;
use crate::error::{io, sys, Error, Result};
use crate::plan::{ChrootLayout, MountPlan};

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

impl Network {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [Network; 2] = [Network::Host, Network::None];

    /// Its name in flags, the config and `run.json`.
    pub fn name(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }

    /// What it means, for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            Network::Host => "share the host's network",
            Network::None => "a network namespace with only loopback (no route out)",
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Network, String> {
        Network::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| format!("unknown network {s:?}: host or none"))
    }
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
    // Before the PID namespace exists: the cgroup anchor must not become
    // its PID 1.
    let mut entry = match &spec.cgroup {
        Some(cg) => Entry::prepare(cg)?,
        None => None,
    };
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
    make_mounts_private()?;
    // Opened now: once the init has pivoted, this process's `/proc` is the
    // job's, where the init's pid as we know it means nothing.
    let proc_dir = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", "/proc"))?;
    // The same for the job's cgroups, when the init cannot enter them
    // itself (see `entry.rs`).
    let groups = match (&spec.cgroup, &entry) {
        (Some(cg), None) => Some(cgroup::open_procs(&cg.enter)?),
        _ => None,
    };
    let (from_init, to_helper) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
    let (from_helper, to_init) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;

    let child = match &mut entry {
        Some(entry) => entry.spawn_init()?,
        None => fork_init()?,
    };
    if child.as_raw() == 0 {
        drop((proc_dir, from_init, to_init, groups));
        let ids = IdHandshake {
            to_helper,
            from_helper,
        };
        let code = match init(spec, ids, entry) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("portroot sandbox: {}", chain(&err));
                SETUP_FAILED
            }
        };
        std::process::exit(code);
    }
    drop((to_helper, from_helper, entry));
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

/// `fork`, as [`Entry::spawn_init`] returns it: 0 in the child.
fn fork_init() -> Result<Pid> {
    // SAFETY: the helper is single-threaded (a fresh exec of our binary that
    // started no threads), so the child may allocate and run ordinary code.
    match unsafe { fork() }.map_err(|source| Error::Proc {
        what: "forking the sandbox init",
        source,
    })? {
        ForkResult::Child => Ok(Pid::from_raw(0)),
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Make every mount of this (new) mount namespace private, recursively, so
/// nothing mounted from here on reaches the namespace it was copied from
/// and everything vanishes with the last process in it.
pub fn make_mounts_private() -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making private", "/"))
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
fn init(spec: &SandboxSpec, ids: IdHandshake, entry: Option<Entry>) -> Result<i32> {
    // First of all, so that everything the init does counts as the job's.
    let entered = entry.is_some();
    if let Some(entry) = entry {
        entry.enter()?;
    }
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
    // The old way in (see `entry.rs`): v2's leaf, opened while its host
    // path is still in reach.
    let leaf = match &spec.cgroup {
        Some(cg) if !entered => Some(cgroup::open_procs(&cg.then)?),
        _ => None,
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
    fn error_chain_joins_sources() {
        let err = Error::Sys {
            what: "binding",
            path: "/x".into(),
            source: Errno::ENOENT,
        };
        assert_eq!(chain(&err), "binding /x: ENOENT: No such file or directory");
    }
}
