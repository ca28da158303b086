//! The job's identity: its user namespace (every uid and gid mapped onto
//! itself by the helper, handshaking over pipes) and the capabilities
//! dropped from its bounding set.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::error::{sys, Error, Result};

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
pub(super) struct IdHandshake {
    pub(super) to_helper: OwnedFd,
    pub(super) from_helper: OwnedFd,
}

impl IdHandshake {
    /// Wait until the helper has put this process in the job's cgroups.
    pub(super) fn wait_for_cgroups(&self) -> Result<()> {
        self.wait_for(b'c', "the helper did not put the job in its cgroups")
    }

    /// Read the helper's one-byte answer `want`; end-of-file means the
    /// helper gave up (`failed` says on what).
    pub(super) fn wait_for(&self, want: u8, failed: &str) -> Result<()> {
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
    pub(super) fn enter_user_namespace(self) -> Result<()> {
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
pub(super) fn map_ids(
    proc_dir: &OwnedFd,
    init: Pid,
    from_init: OwnedFd,
    to_init: OwnedFd,
) -> Result<()> {
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
pub(super) fn drop_bounding_caps() -> Result<()> {
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
