//! The job's init enters its cgroups and its cgroup namespace without
//! moving a process through `cgroup.procs`.
//!
//! Every write to a `cgroup.procs` file takes the kernel's
//! `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace
//! period: 3 to 12 ms on a 2-CPU VM, on the path of every job. Two ways in
//! take no such lock:
//!
//! - **cgroup v1:** a single-threaded process moving *itself* through the
//!   `tasks` file (writing `0`): the kernel skips the threadgroup lock when
//!   the mover is the one thread moved (`cgroup_procs_write_start`). The init
//!   does so first thing after it is forked.
//! - **cgroup v2:** `clone3(CLONE_INTO_CGROUP)` (Linux 5.7) creates the init
//!   directly in the leaf `ns/init`, holding the lock only for reading.
//!
//! The job's cgroup namespace must have `ns` as its v2 root while the init
//! sits in `ns/init`, but a namespace's roots are the cgroups of whoever
//! makes it. So an *anchor* is made first: a child cloned into `ns` that
//! moves itself into the v1 groups, `unshare(CLONE_NEWCGROUP)`s, and waits;
//! the helper keeps its namespace (`/proc/PID/ns/cgroup`) and lets it exit,
//! and the init `setns`es into that namespace. `ns` is empty again before
//! the job starts, so the job may pass controllers down from it.
//!
//! A kernel without `clone3` or `CLONE_INTO_CGROUP` gets the old way: the
//! helper writes the init's pid into `cgroup.procs` (see `sandbox::run`).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{pipe2, Pid};

use crate::cgroup::CgroupSpec;
use crate::error::{io, sys, Error, Result};

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How the init gets into the job's groups without a `cgroup.procs` move:
/// prepared by the helper before it unshares the PID namespace.
pub(super) struct Entry {
    /// The v1 groups' `tasks` files, which the init writes `0` into.
    tasks: Vec<(PathBuf, File)>,
    /// The v2 leaf the init is cloned into, if there is a v2 group.
    leaf: Option<OwnedFd>,
    /// The anchor, while it makes the job's cgroup namespace (v2 only;
    /// without v2 the init makes it itself once in its v1 groups).
    anchor: Option<Anchor>,
    /// The namespace the anchor made.
    namespace: Option<OwnedFd>,
}

impl Entry {
    /// Open what the init needs and, with a v2 group, make the anchor's
    /// namespace. `None` when this kernel cannot (no `clone3` or no
    /// `CLONE_INTO_CGROUP`) or the groups are not laid out as `create_job`
    /// makes them: then the old way applies.
    pub(super) fn prepare(spec: &CgroupSpec) -> Result<Option<Entry>> {
        let (v1, v2): (Vec<&PathBuf>, Vec<&PathBuf>) =
            spec.enter.iter().partition(|d| d.join("tasks").exists());
        let leaf = match (v2.as_slice(), spec.then.as_slice()) {
            ([], []) => None,
            ([ns], [leaf]) if leaf.parent() == Some(ns.as_path()) => Some(open_dir(leaf)?),
            _ => return Ok(None),
        };
        let tasks = v1
            .into_iter()
            .map(|d| {
                let path = d.join("tasks");
                let file = File::options()
                    .write(true)
                    .open(&path)
                    .map_err(io("opening", &path))?;
                Ok((path, file))
            })
            .collect::<Result<Vec<_>>>()?;
        let anchor = match (&leaf, v2.first()) {
            (Some(_), Some(ns)) => match Anchor::start(ns, &tasks)? {
                Some(a) => Some(a),
                None => return Ok(None),
            },
            _ => None,
        };
        Ok(Some(Entry {
            tasks,
            leaf,
            anchor,
            namespace: None,
        }))
    }

    /// Create the init: forked, or cloned into the v2 leaf, once the anchor
    /// (which worked meanwhile) has made the namespace. Returns like `fork`
    /// (0 in the child). The caller is single-threaded.
    pub(super) fn spawn_init(&mut self) -> Result<Pid> {
        if let Some(anchor) = self.anchor.take() {
            self.namespace = Some(anchor.namespace()?);
        }
        match &self.leaf {
            Some(leaf) => clone_into(leaf).map_err(|source| Error::Proc {
                what: "cloning the sandbox init into the job's cgroup",
                source,
            }),
            // SAFETY: the caller is single-threaded.
            None => match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => Ok(Pid::from_raw(0)),
                Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
                Err(source) => Err(Error::Proc {
                    what: "forking the sandbox init",
                    source,
                }),
            },
        }
    }

    /// In the init, first thing: into the v1 groups (itself, through
    /// `tasks`), then into the job's cgroup namespace.
    pub(super) fn enter(self) -> Result<()> {
        join_tasks(self.tasks)?;
        match self.namespace {
            Some(ns) => setns(ns, CloneFlags::CLONE_NEWCGROUP),
            None => unshare(CloneFlags::CLONE_NEWCGROUP),
        }
        .map_err(|source| Error::Proc {
            what: "entering the job's cgroup namespace",
            source,
        })
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", dir))
}

/// This (single-threaded) process into the groups whose `tasks` are open.
fn join_tasks(tasks: Vec<(PathBuf, File)>) -> Result<()> {
    // At offset 0: the anchor wrote through the same open files.
    for (path, file) in tasks {
        file.write_all_at(b"0", 0).map_err(io("writing", &path))?;
    }
    Ok(())
}

/// `clone3(CLONE_INTO_CGROUP)` into the cgroup `dir`, otherwise like fork:
/// 0 in the child, the child's pid in the parent.
fn clone_into(dir: &OwnedFd) -> std::result::Result<Pid, Errno> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size given. Without
    // CLONE_VM the child gets a copy of this address space, as with fork;
    // the caller is single-threaded, so no lock is held by another thread
    // in the copy (youki and crun start their inits the same way).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => Err(Errno::last()),
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// The anchor: a child cloned into `ns` that joins the v1 groups, makes a
/// cgroup namespace there and waits until the helper has it.
struct Anchor {
    pid: Pid,
    ready: OwnedFd,
    hold: OwnedFd,
}

impl Anchor {
    /// Clone it; it works while the helper goes on. `None` if this kernel
    /// has no `clone3` into a cgroup.
    fn start(ns: &Path, tasks: &[(PathBuf, File)]) -> Result<Option<Anchor>> {
        let pipe_error = |source| Error::Proc {
            what: "making the cgroup anchor's pipes",
            source,
        };
        let (ready_rx, ready_tx) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
        let (hold_rx, hold_tx) = pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
        let dir = open_dir(ns)?;
        let pid = match clone_into(&dir) {
            Ok(pid) => pid,
            Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG | Errno::EOPNOTSUPP) => {
                return Ok(None)
            }
            Err(source) => {
                return Err(Error::Proc {
                    what: "cloning the cgroup anchor",
                    source,
                })
            }
        };
        if pid.as_raw() == 0 {
            // The anchor's copies of the helper's ends: the hold must end
            // when the helper closes its end, not stay open here.
            // SAFETY: closing fds this process owns; it only `_exit`s after,
            // so no OwnedFd closes them again.
            unsafe {
                libc::close(hold_tx.as_raw_fd());
                libc::close(ready_rx.as_raw_fd());
            }
            anchor(tasks, &ready_tx, &hold_rx);
        }
        Ok(Some(Anchor {
            pid,
            ready: ready_rx,
            hold: hold_tx,
        }))
    }

    /// Wait until the namespace is made, keep it, let the anchor go.
    fn namespace(self) -> Result<OwnedFd> {
        let mut byte = [0u8; 1];
        let path = format!("/proc/{}/ns/cgroup", self.pid);
        let ns = match nix::unistd::read(&self.ready, &mut byte) {
            Ok(1) => nix::fcntl::open(
                Path::new(&path),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys("opening", &path)),
            _ => Err(Error::Invalid(
                "the cgroup anchor could not join the job's groups".into(),
            )),
        };
        drop(self.hold);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        ns
    }
}

/// The anchor's whole life: only system calls, then `_exit`.
fn anchor(tasks: &[(PathBuf, File)], ready: &OwnedFd, hold: &OwnedFd) -> ! {
    let joined = tasks.iter().all(|(_, file)| {
        // SAFETY: writing one byte from a live buffer to an open fd.
        unsafe { libc::pwrite(file.as_raw_fd(), b"0".as_ptr().cast(), 1, 0) == 1 }
    });
    if joined && unshare(CloneFlags::CLONE_NEWCGROUP).is_ok() {
        let _ = nix::unistd::write(ready, b"r");
        let mut byte = [0u8; 1];
        // Until the helper has our namespace and closes its end.
        let _ = nix::unistd::read(hold, &mut byte);
    }
    // SAFETY: _exit ends this process at once, running nothing of the
    // parent's copied state.
    unsafe { libc::_exit(0) }
}
