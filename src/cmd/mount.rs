//! `portroot mount` and `portroot umount`.
//!
//! `mount` runs a daemon in the background by default: it re-executes this binary
//! as `portroot mount --foreground --ready-fd 3 ...` in a process group of its
//! own (so the terminal's Ctrl-C and hangup do not reach it) with its stdio on
//! /dev/null, and returns once the child writes `ready` on that pipe
//! (or exits 1 with the child's error line). `--foreground` is the daemon itself:
//! it blocks SIGINT/SIGTERM/SIGHUP before the FUSE threads exist (so they inherit
//! the mask and only this thread sees them), mounts, then waits for a signal or
//! for the mount to disappear, and unmounts cleanly. The FUSE work lives in the
//! `portroot-fs` crate.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use portroot_fs::{MountOptions, View};
use tracing::info;

use portroot::config::{choice, parse_cache_size, IoUring};

use super::Ctx;

/// The fd number the daemon reports readiness on (`--ready-fd`).
const READY_FD: i32 = 3;
/// What the daemon writes on the ready pipe once the mount is live.
const READY: &str = "ready";

/// Arguments of `portroot mount`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    portroot mount --tag 2026-08-20 /mnt/gentoo        # one snapshot, in the background\n  \
    portroot mount --all /mnt/history                  # every tag, plus `latest`\n  \
    portroot mount --git-dir ~/overlay/.git --tag main /mnt/overlay\n  \
    portroot mount --tag 2026-08-20 --foreground /mnt/gentoo   # Ctrl-C unmounts\n  \
    portroot umount /mnt/gentoo")]
pub struct MountArgs {
    /// A repository of the store (`repos/NAME.git`) [default: the config's
    /// `repo`, else gentoo].
    #[arg(long, value_name = "NAME", conflicts_with = "git_dir", value_parser = portroot::store::parse_name)]
    pub repo: Option<String>,

    /// Any git repository instead: a bare repo or a `.git` directory.
    #[arg(long, value_name = "PATH")]
    pub git_dir: Option<PathBuf>,

    /// The tag, branch or commit id to serve.
    #[arg(
        long,
        value_name = "REF",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub tag: Option<String>,

    /// Serve every tag side by side (MOUNTPOINT/TAG/...), with `latest` a symlink
    /// to the newest; tags created while mounted appear without a remount.
    #[arg(long)]
    pub all: bool,

    /// Stay in front, log to stderr, unmount on Ctrl-C or SIGTERM.
    #[arg(long)]
    pub foreground: bool,

    /// Object cache budget (bytes, or with a K, M or G suffix) [default: the
    /// config's `mount.cache_size`, else 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_cache_size)]
    pub cache_size: Option<u64>,

    /// FUSE worker threads [default: the config's `mount.threads`, else 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,

    /// FUSE over io_uring: one request queue per CPU, answered on the CPU
    /// that asked, which makes a cold walk 40-45% faster on a VM. Needs
    /// Linux 6.14+ with /sys/module/fuse/parameters/enable_uring set to Y;
    /// `auto` uses it when allowed, `on` fails the mount otherwise, `off`
    /// serves through /dev/fuse [default: the config's `mount.io_uring`,
    /// else auto].
    #[arg(long, value_name = "WHEN", value_parser = choice::<IoUring>())]
    pub io_uring: Option<IoUring>,

    /// Internal: report readiness (or the error) on this inherited fd.
    #[arg(long, hide = true, value_name = "FD")]
    pub ready_fd: Option<i32>,

    /// An existing, empty directory.
    pub mountpoint: PathBuf,
}

/// Arguments of `portroot umount`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  portroot umount /mnt/gentoo")]
pub struct UmountArgs {
    /// What to unmount.
    pub mountpoint: PathBuf,
}

/// `portroot mount`.
pub fn mount(ctx: &Ctx, mut args: MountArgs) -> anyhow::Result<ExitCode> {
    // Flags first, then the config, then the built-in defaults; resolved here
    // so the daemon gets them as explicit flags.
    let conf = &ctx.config.merged;
    args.cache_size = Some(
        args.cache_size
            .or(conf.mount.cache_size)
            .unwrap_or(portroot::config::DEFAULT_CACHE_SIZE),
    );
    args.threads = Some(
        args.threads
            .or(conf.mount.threads)
            .unwrap_or(portroot::config::DEFAULT_THREADS),
    );
    args.io_uring = Some(
        args.io_uring
            .or(conf.mount.io_uring)
            .unwrap_or(IoUring::Auto),
    );
    let git_dir = match &args.git_dir {
        Some(p) => p.clone(),
        None => {
            let repo = args
                .repo
                .as_deref()
                .or(conf.repo.as_deref())
                .unwrap_or(portroot::store::DEFAULT_REPO);
            if !portroot::store::is_valid_name(repo) {
                bail!("invalid repository name {repo:?}");
            }
            ctx.store.repo_path(repo)
        }
    };
    if !git_dir.exists() {
        bail!("no git repository at {}", git_dir.display());
    }
    if args.foreground || args.ready_fd.is_some() {
        run_daemon(&git_dir, &args)
    } else {
        spawn_daemon(ctx, &git_dir, &args)
    }
}

fn view(args: &MountArgs) -> View {
    match &args.tag {
        Some(t) => View::Ref(t.clone()),
        None => View::AllTags,
    }
}

/// The daemon: mount, report, wait for a signal or an outside unmount.
fn run_daemon(git_dir: &Path, args: &MountArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: the parent passed this fd to us for our exclusive use (dup2'd to
    // READY_FD right before exec); nothing else in this process owns it.
    let mut ready = args.ready_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
    if let Some(f) = &ready {
        // Children must not inherit the pipe, or the parent's read
        // would only end when they do.
        // SAFETY: fcntl on an fd we own, with no pointers involved.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mounted = (|| {
        // Phase one: block the signals before fuser spawns its threads, so they
        // inherit the mask and a Ctrl-C during the mount cannot kill us mid-way.
        signals()
            .thread_block()
            .context("blocking SIGINT/SIGTERM/SIGHUP")?;
        let opts = options(args.cache_size, args.threads, args.io_uring);
        portroot_fs::mount(git_dir, view(args), &args.mountpoint, &opts).with_context(
            || match &args.tag {
                Some(t) => format!("cannot mount {t}"),
                None => "cannot mount every tag".to_owned(),
            },
        )
    })();
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            if let Some(f) = ready.as_mut() {
                // The parent prints this line; if the pipe is gone, so is it.
                let _ = writeln!(f, "{e:#}");
            }
            return Err(e);
        }
    };
    info!(transport = %mounted.transport(), "serving");
    if let Some(mut f) = ready.take() {
        // Dropping the file closes the pipe: the parent's read then ends.
        let _ = writeln!(f, "{READY}");
    }
    // Phase two: wait for a signal, or for the mount to go away from outside
    // (`portroot umount`, `fusermount3 -u`).
    let signal = loop {
        if let Some(sig) = wait_signal(Duration::from_millis(500))? {
            break Some(sig);
        }
        if mounted.is_finished() {
            break None;
        }
    };
    match signal {
        Some(sig) => info!(signal = ?sig, "signal received, unmounting"),
        None => info!("unmounted from outside, exiting"),
    }
    mounted.unmount().context("unmounting")?;
    Ok(ExitCode::SUCCESS)
}

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Wait up to `timeout` for one of the blocked signals.
fn wait_signal(timeout: Duration) -> anyhow::Result<Option<Signal>> {
    let set = signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid sigset_t for the call's duration, the info pointer
    // may be null, and `ts` is a valid timespec.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err).context("waiting for signals"),
        };
    }
    Ok(Signal::try_from(n).ok())
}

/// Re-exec ourselves as the daemon and wait for it to report.
fn spawn_daemon(ctx: &Ctx, git_dir: &Path, args: &MountArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the portroot binary")?;
    let git_dir =
        std::path::absolute(git_dir).with_context(|| format!("resolving {}", git_dir.display()))?;
    let mountpoint = std::path::absolute(&args.mountpoint)
        .with_context(|| format!("resolving {}", args.mountpoint.display()))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
    let mut cmd = Command::new(exe);
    // Every default is resolved and passed as a flag: the daemon reads no
    // configuration file.
    cmd.arg("--store")
        .arg(ctx.store.root())
        .arg("--no-config")
        .args(["mount", "--foreground", "--ready-fd"])
        .arg(READY_FD.to_string())
        .arg("--git-dir")
        .arg(&git_dir);
    if let Some(size) = args.cache_size {
        cmd.arg("--cache-size").arg(size.to_string());
    }
    if let Some(threads) = args.threads {
        cmd.arg("--threads").arg(threads.to_string());
    }
    if let Some(when) = args.io_uring {
        cmd.arg("--io-uring").arg(when.name());
    }
    match &args.tag {
        Some(t) => cmd.arg("--tag").arg(t),
        None => cmd.arg("--all"),
    };
    cmd.arg("--").arg(&mountpoint);
    // A process group, not a session: the daemon stays in the caller's
    // session and so in its scheduler autogroup. In another autogroup the
    // scheduler moves a reader to the idle CPU at nearly every io_uring reply,
    // which measured twice as slow once the blobs are in the daemon's cache.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let wfd = wr.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (dup2, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if wfd == READY_FD {
                if libc::fcntl(wfd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    drop(wr);
    let mut report = String::new();
    File::from(rd)
        .read_to_string(&mut report)
        .context("reading the mount daemon's report")?;
    let report = report.trim();
    if report == READY {
        info!(pid = child.id(), mountpoint = %mountpoint.display(), "mount daemon ready");
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait().context("waiting for the mount daemon")?;
    if report.is_empty() {
        bail!("the mount daemon exited ({status}) before the mount was ready");
    }
    // The daemon already formatted the whole chain; print it as ours.
    bail!("{report}")
}

/// The fstype and source fields of the mount at `path` (canonical), if any.
fn mount_fstype(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().find_map(|l| {
        let mut fields = l.split(' ');
        let mp = fields.nth(4)?;
        if mp != want {
            return None;
        }
        let mut rest = l.split(" - ").nth(1)?.split(' ');
        let fstype = rest.next()?.to_owned();
        let source = rest.next().unwrap_or_default().to_owned();
        Some((fstype, source))
    })
}

/// Whether a mount is one of ours: plain `fuse` with our `portroot:` source
/// (the daemon asks the kernel directly), or `fuse.portroot` when fusermount3
/// mounted it with its subtype (earlier versions did, and fuser still does for
/// a mount made without root).
fn is_portroot_mount(fstype: &str, source: &str) -> bool {
    fstype == "fuse.portroot" || (fstype == "fuse" && source.starts_with("portroot:"))
}

/// `portroot umount`.
pub fn umount(_ctx: &Ctx, args: UmountArgs) -> anyhow::Result<ExitCode> {
    let mp = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    let Some((fstype, source)) = mount_fstype(&mp) else {
        bail!("{} is not mounted", mp.display());
    };
    if !is_portroot_mount(&fstype, &source) {
        bail!(
            "{} is a {fstype} mount, not one of portroot's",
            mp.display()
        );
    }
    let daemons = daemon_pids(&mp);
    match nix::mount::umount2(&mp, nix::mount::MntFlags::empty()) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => bail!(
            "{} is busy: a process still has files or its working directory there",
            mp.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", mp.display())),
    }
    // The daemon sees the connection close and exits; give it a moment so the
    // caller can rely on it being gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in daemons {
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    info!(mountpoint = %mp.display(), "unmounted");
    Ok(ExitCode::SUCCESS)
}

/// Daemons serving `mp`: processes whose command line is our foreground mount
/// of exactly that path (the background mode always passes it absolute, last).
fn daemon_pids(mp: &Path) -> Vec<nix::unistd::Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = mp.as_os_str().as_encoded_bytes();
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        let ours = args.iter().any(|a| *a == b"--foreground")
            && args.iter().any(|a| *a == b"mount")
            && args.last() == Some(&want);
        ours.then_some(nix::unistd::Pid::from_raw(pid))
    })
    .collect()
}

/// The fs crate's mount options from a cache size, a thread count and an
/// io_uring choice (flags or configuration), the fs crate's default for each
/// one not given.
pub(super) fn options(
    cache_size: Option<u64>,
    threads: Option<u16>,
    io_uring: Option<IoUring>,
) -> MountOptions {
    let defaults = MountOptions::default();
    MountOptions {
        cache_bytes: cache_size.unwrap_or(defaults.cache_bytes),
        threads: threads.map_or(defaults.threads, usize::from),
        io_uring: io_uring.unwrap_or(defaults.io_uring),
        ..defaults
    }
}
