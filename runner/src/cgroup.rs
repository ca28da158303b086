//! Job cgroups: every job in a cgroup of its own, carrying its limits
//! (memory, CPU, pids) and its accounting (CPU time, peak memory, OOM kills),
//! killed and removed when the job ends.
//!
//! Where it sits in the flow: the runner finds the mounted hierarchies and its
//! own cgroup in each once ([`detect_hierarchies`]) and creates
//! `portroot/<run>` under that cgroup ([`RunCgroup`], removed on drop). A
//! pool worker creates the job's group ([`JobCgroup`]) before it starts the
//! sandbox helper; the helper puts the job's init in it ([`place`]) while
//! the init mounts the chroot, and the init creates its cgroup namespace
//! once there (`sandbox.rs`, with [`CgroupSpec`]); after the helper exits
//! the worker kills whatever is left, reads the usage and removes the group.
//!
//! The layout, in each hierarchy:
//!
//! ```text
//! <runner's cgroup>/portroot/<run>/<job>/           limits and accounting (v1 and v2)
//! <runner's cgroup>/portroot/<run>/<job>/ns/        v2: root of the job's cgroup namespace,
//!                                                   its /sys/fs/cgroup
//! <runner's cgroup>/portroot/<run>/<job>/ns/init/   v2: the job's init and shell
//! ```
//!
//! The limits sit on `<job>`, above the namespace root, so root inside the job
//! cannot lift them through its own `memory.max`. cgroup v2 lets a group pass
//! controllers down only while it holds no process itself ("no internal
//! processes", Documentation/admin-guide/cgroup-v2.rst): the init therefore
//! sits in the leaf `ns/init`, and `ns` can enable controllers for what the
//! job creates beside it (portage's `FEATURES=cgroup` makes
//! `portage/emerge-<pid>`). In v1 hierarchies the init sits in `<job>` itself:
//! v1 has no such rule, and the job sees them only read-only.
//!
//! On a pure v2 host the runner's own group holds the runner, so it cannot
//! pass controllers down either: the runner then moves itself (only itself
//! and its children) into the leaf `<runner's cgroup>/portroot-runner`, as
//! systemd's delegation rules ask, and enables the controllers beside it;
//! when the run ends it moves back and removes the leaf ([`RunCgroup`]'s
//! drop), and `gc` removes a leaf a killed runner left. A group it shares
//! with processes not its own (a login shell) it leaves alone: jobs then get
//! no v2 controllers, and a limit that needs one is refused, naming them.
//!
//! On a hybrid host (controllers on v1 hierarchies, the v2 hierarchy without
//! controllers) limits and accounting come from v1 and the kill from v2's
//! `cgroup.kill`; on a pure v1 host the kill freezes the group (freezer) or
//! signals every pid until none is left.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

/// The v1 controllers a job gets a group in, where mounted.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];

/// The leaf a runner moves itself into on cgroup v2 when its own group must
/// pass controllers down (see [`pass_down`]).
pub const RUNNER_LEAF: &str = "portroot-runner";

/// The period every CPU quota is given in, microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// How long killing and removing a job's group may take before it is
/// reported as left behind.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a job's cgroup v2 hierarchy is mounted inside its chroot, when the
/// host mounts it under `/sys`.
const SYS_PREFIX: &str = "/sys";

/// The smallest `--memory`: below this a shell cannot even start.
pub const MIN_MEMORY: u64 = 1 << 20;

/// The largest `--pids` (the kernel's `PID_MAX_LIMIT` on 64-bit).
pub const MAX_PIDS: u64 = 4_194_304;

/// A CPU quota in thousandths of a CPU (`1.5` is 1500). The kernel's smallest
/// quota is 1 ms per period, so with the default 100 ms period 0.01 CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpus(u32);

impl Cpus {
    /// 0.01 CPU.
    pub const MIN_MILLI: u32 = 10;
    /// 4096 CPUs.
    pub const MAX_MILLI: u32 = 4_096_000;

    /// Parse `2`, `0.5` or `1.25` (at most three decimals).
    pub fn parse(s: &str) -> std::result::Result<Cpus, String> {
        let bad = || format!("bad CPU count {s:?}: expected a number such as 2 or 0.5");
        let t = s.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(bad());
        }
        if frac.len() > 3 {
            return Err(format!("CPU count {s:?} has more than three decimals"));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_milli = format!("{frac:0<3}").parse::<u64>().map_err(|_| bad())?;
        let milli = whole.saturating_mul(1000).saturating_add(frac_milli);
        if !(u64::from(Cpus::MIN_MILLI)..=u64::from(Cpus::MAX_MILLI)).contains(&milli) {
            return Err(format!("CPU count must be 0.01 to 4096, not {t}"));
        }
        Ok(Cpus(milli as u32))
    }

    /// The quota per [`CPU_PERIOD_US`], in microseconds.
    pub fn quota_us(self) -> u64 {
        u64::from(self.0) * CPU_PERIOD_US / 1000
    }
}

impl std::fmt::Display for Cpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// Check a `--memory` value.
pub fn check_memory(bytes: u64) -> std::result::Result<u64, String> {
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory limit must be at least 1M, not {bytes} bytes"
        ));
    }
    Ok(bytes)
}

/// Check a `--pids` value.
pub fn check_pids(n: u64) -> std::result::Result<u64, String> {
    if !(1..=MAX_PIDS).contains(&n) {
        return Err(format!("pids limit must be 1 to {MAX_PIDS}, not {n}"));
    }
    Ok(n)
}

/// What each job of a run may use. Unset means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes, RAM and swap together (`memory.max` with
    /// `memory.swap.max` 0; v1 `memory.limit_in_bytes` and
    /// `memory.memsw.limit_in_bytes`).
    pub memory: Option<u64>,
    /// CPU time per wall time (`cpu.max`; v1 `cpu.cfs_quota_us`).
    pub cpus: Option<Cpus>,
    /// Processes and threads (`pids.max`).
    pub pids: Option<u64>,
}

/// What a job used, as its cgroup counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, user and system, of every process of the job.
    pub cpu: Option<Duration>,
    /// The most memory the job's processes held at once, in bytes.
    pub peak_memory: Option<u64>,
    /// How many processes the kernel's OOM killer killed in the job.
    pub oom_kills: u64,
}

/// One mounted cgroup hierarchy the runner can place jobs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (in the runner's mount namespace).
    pub mount: PathBuf,
    /// `None` for cgroup v2; else the v1 controllers portroot uses on it.
    pub v1: Option<Vec<String>>,
    /// The runner's own cgroup in it, a directory under `mount`.
    pub own: PathBuf,
}

/// One `cgroup` or `cgroup2` line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// The mount's root within its hierarchy (the 4th field).
    root: PathBuf,
    mountpoint: PathBuf,
    /// `None` for cgroup2; the super options (controllers, `name=`) for v1.
    v1: Option<Vec<String>>,
    /// `major:minor` of the hierarchy.
    dev: (u32, u32),
}

/// The cgroup mounts of `mountinfo` (proc(5)); of several on one mount
/// point only the last, which hides the others.
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out: Vec<CgroupMount> = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if f.len() < 5 || r.len() < 3 {
            continue;
        }
        let v1 = match r[0] {
            "cgroup2" => None,
            "cgroup" => Some(r[2].split(',').map(str::to_owned).collect()),
            _ => {
                out.retain(|m| m.mountpoint != Path::new(&unescape(f[4])));
                continue;
            }
        };
        let dev = f[2]
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        let Some(dev) = dev else { continue };
        let mount = CgroupMount {
            root: PathBuf::from(unescape(f[3])),
            mountpoint: PathBuf::from(unescape(f[4])),
            v1,
            dev,
        };
        out.retain(|m| m.mountpoint != mount.mountpoint);
        out.push(mount);
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The lines of `/proc/self/cgroup` (cgroups(7)): the controllers of each
/// hierarchy (empty for v2) and this process's cgroup path in it.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            let ctrls = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

/// The hierarchies a job gets a group in: the v2 one (preferring
/// `/sys/fs/cgroup`) and each v1 one with a controller portroot uses, each
/// with the runner's cgroup in it. `reachable` tells a mount that path
/// lookups reach from one hidden under a later mount.
fn find_hierarchies(
    mounts: &[CgroupMount],
    procs: &[(Vec<String>, String)],
    reachable: &dyn Fn(&CgroupMount) -> bool,
) -> Vec<Hierarchy> {
    let own_in = |m: &CgroupMount, path: &str| -> Option<PathBuf> {
        let rel = Path::new(path).strip_prefix(&m.root).ok()?;
        Some(if rel.as_os_str().is_empty() {
            m.mountpoint.clone()
        } else {
            m.mountpoint.join(rel)
        })
    };
    let mut out = Vec::new();
    if let Some((_, path)) = procs.iter().find(|(c, _)| c.is_empty()) {
        let mut v2: Vec<&CgroupMount> = mounts.iter().filter(|m| m.v1.is_none()).collect();
        v2.sort_by_key(|m| m.mountpoint != Path::new("/sys/fs/cgroup"));
        let found = v2.into_iter().filter(|m| reachable(m)).find_map(|m| {
            Some(Hierarchy {
                mount: m.mountpoint.clone(),
                v1: None,
                own: own_in(m, path)?,
            })
        });
        out.extend(found);
    }
    for (ctrls, path) in procs.iter().filter(|(c, _)| !c.is_empty()) {
        let used: Vec<String> = ctrls
            .iter()
            .filter(|c| V1_CONTROLLERS.contains(&c.as_str()))
            .cloned()
            .collect();
        if used.is_empty() {
            continue;
        }
        let found = mounts.iter().find_map(|m| {
            let opts = m.v1.as_ref()?;
            if !ctrls.iter().all(|c| opts.contains(c)) || !reachable(m) {
                return None;
            }
            Some(Hierarchy {
                mount: m.mountpoint.clone(),
                v1: Some(used.clone()),
                own: own_in(m, path)?,
            })
        });
        out.extend(found);
    }
    out
}

/// The cgroup hierarchies of this process's mount namespace it can place
/// jobs in, with its own cgroup in each. None at all is not an error (a
/// container without cgroupfs): jobs then run without groups or limits.
pub fn detect_hierarchies() -> Result<Vec<Hierarchy>> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let cgroup = Path::new("/proc/self/cgroup");
    let mounts = parse_mountinfo(&fs::read_to_string(mountinfo).map_err(io("reading", mountinfo))?);
    let procs = parse_proc_cgroup(&fs::read_to_string(cgroup).map_err(io("reading", cgroup))?);
    let reachable = |m: &CgroupMount| {
        fs::metadata(&m.mountpoint).is_ok_and(|md| md.dev() == libc::makedev(m.dev.0, m.dev.1))
    };
    Ok(find_hierarchies(&mounts, &procs, &reachable))
}

/// One hierarchy's directory of a run or a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    /// Whether the hierarchy is cgroup v2.
    v2: bool,
    /// The v1 controllers of the hierarchy (empty for v2).
    controllers: Vec<String>,
    /// The directory.
    path: PathBuf,
}

impl Group {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Which group of a run (an index into its groups) serves what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Roles {
    memory: Option<usize>,
    cpu: Option<usize>,
    pids: Option<usize>,
    cpuacct: Option<usize>,
    /// A v2 group whose jobs have `cgroup.kill`.
    v2: Option<usize>,
    freezer: Option<usize>,
}

/// `portroot/<run>` in every hierarchy; dropping it kills whatever is left
/// in it and removes it (and `portroot/` when no other run uses it).
#[derive(Debug)]
pub struct RunCgroup {
    groups: Vec<Group>,
    roles: Roles,
    limits: Limits,
    /// Where the job's chroot gets a cgroup2 of its own (its namespace).
    private_mount: Option<PathBuf>,
    /// What the runner changed in its own v2 group, undone on drop.
    delegation: Option<Delegation>,
}

/// What [`pass_down`] did to the runner's own v2 group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Delegation {
    /// The runner's group.
    own: PathBuf,
    /// The controllers it enabled in `own`'s `cgroup.subtree_control`.
    enabled: Vec<String>,
    /// The leaf it moved into, if it did.
    leaf: Option<PathBuf>,
    /// Why `own` passes no controllers down, if it does not.
    refused: Option<String>,
}

impl RunCgroup {
    /// Create `portroot/<run>` under the runner's cgroup in each of
    /// `hierarchies` and check that every limit in `limits` has a controller.
    pub fn create(hierarchies: &[Hierarchy], run: &str, limits: Limits) -> Result<RunCgroup> {
        let mut rc = RunCgroup {
            groups: Vec::new(),
            roles: Roles::default(),
            limits,
            private_mount: None,
            delegation: None,
        };
        let mut v2_delegated: Vec<String> = Vec::new();
        for h in hierarchies {
            let path = h.own.join("portroot").join(run);
            let v2 = h.v1.is_none();
            if v2 && rc.delegation.is_none() {
                // Stored before anything can fail, so drop undoes it.
                let d = rc.delegation.insert(Delegation {
                    own: h.own.clone(),
                    ..Delegation::default()
                });
                pass_down(d)?;
            }
            make_dir_all(&path)?;
            rc.groups.push(Group {
                v2,
                controllers: h.v1.clone().unwrap_or_default(),
                path: path.clone(),
            });
            if v2 {
                enable_controllers(&h.own.join("portroot"));
                enable_controllers(&path);
                v2_delegated = read_words(&path.join("cgroup.subtree_control"));
                if h.mount.starts_with(SYS_PREFIX) {
                    rc.private_mount = Some(h.mount.clone());
                }
            }
        }
        rc.roles = roles(&rc.groups, &v2_delegated);
        let missing: Vec<(&str, &str)> = [
            (
                limits.memory.is_some() && rc.roles.memory.is_none(),
                "--memory",
                "memory",
            ),
            (
                limits.cpus.is_some() && rc.roles.cpu.is_none(),
                "--cpus",
                "cpu",
            ),
            (
                limits.pids.is_some() && rc.roles.pids.is_none(),
                "--pids",
                "pids",
            ),
        ]
        .into_iter()
        .filter_map(|(miss, flag, ctrl)| miss.then_some((flag, ctrl)))
        .collect();
        if !missing.is_empty() {
            let needs: Vec<String> = missing
                .iter()
                .map(|(flag, ctrl)| format!("{flag} needs the {ctrl} controller"))
                .collect();
            let ctrls: Vec<&str> = missing.iter().map(|(_, c)| *c).collect();
            return Err(Error::Invalid(format!(
                "{}, which no cgroup hierarchy gives the runner's jobs{}",
                needs.join(", "),
                match &rc.delegation {
                    Some(d) => format!(" ({})", d.why_none(&ctrls)),
                    None => String::new(),
                }
            )));
        }
        tracing::debug!(run, "{}", rc.describe(&v2_delegated));
        Ok(rc)
    }

    /// One line on what the jobs get: hierarchies, controllers, and what
    /// each job's `/sys/fs/cgroup` offers.
    fn describe(&self, v2_delegated: &[String]) -> String {
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                if g.v2 {
                    let refused = self.delegation.as_ref().and_then(|d| d.refused.as_ref());
                    let ctrls = if let (true, Some(why)) = (v2_delegated.is_empty(), refused) {
                        format!("no controllers: {why}")
                    } else if v2_delegated.is_empty() {
                        "no controllers".to_owned()
                    } else {
                        v2_delegated.join(" ")
                    };
                    format!("v2 {} ({ctrls})", g.path.display())
                } else {
                    format!("v1 {} {}", g.controllers.join(","), g.path.display())
                }
            })
            .collect();
        if parts.is_empty() {
            parts.push("no cgroup hierarchy: jobs run without groups, limits or accounting".into());
        }
        let view = match &self.private_mount {
            Some(at) if at == Path::new("/sys/fs/cgroup") => {
                "each job's /sys/fs/cgroup is a writable cgroup2 showing only its own group"
                    .to_owned()
            }
            Some(at) => format!(
                "each job's /sys/fs/cgroup is the host's v1 tree, read-only (portage's \
                 FEATURES=cgroup cannot make groups there), and its {} a writable cgroup2 \
                 showing only its own group",
                at.display()
            ),
            None => "each job's /sys/fs/cgroup is the host's, read-only (no cgroup v2 under /sys \
                     to give it one of its own)"
                .to_owned(),
        };
        format!("job cgroups: {}; {view}", parts.join(", "))
    }

    /// The run's directories, one per hierarchy, for `run.json` (so `gc`
    /// can remove them after a SIGKILL).
    /// The runner's leaf, if it moved into one, comes last.
    pub fn paths(&self) -> Vec<PathBuf> {
        let leaf = self.delegation.as_ref().and_then(|d| d.leaf.clone());
        self.groups
            .iter()
            .map(|g| g.path.clone())
            .chain(leaf)
            .collect()
    }

    /// Create the group of job `name` with the run's limits.
    pub fn create_job(&self, name: &str) -> Result<JobCgroup> {
        let mut job = JobCgroup {
            groups: Vec::new(),
            roles: self.roles.clone(),
            removed: false,
            spec: CgroupSpec {
                enter: Vec::new(),
                then: Vec::new(),
                mount: self.private_mount.clone(),
            },
        };
        for g in &self.groups {
            let path = g.path.join(name);
            make_dir(&path)?;
            job.groups.push(Group {
                path: path.clone(),
                ..g.clone()
            });
            if g.v2 {
                enable_controllers(&path);
                let ns = path.join("ns");
                make_dir(&ns)?;
                make_dir(&ns.join("init"))?;
                job.spec.then.push(ns.join("init"));
                job.spec.enter.push(ns);
            } else {
                job.spec.enter.push(path);
            }
        }
        job.apply(&self.limits)?;
        Ok(job)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let _ = kill_all(&self.groups, self.roles.v2, self.roles.freezer)
            .and_then(|()| remove_all(&self.groups));
        for g in &self.groups {
            // Another run under the same cgroup may still use `portroot/`:
            // then the kernel refuses (EBUSY) and it stays.
            if let Some(parent) = g.path.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        if let Some(d) = &self.delegation {
            d.undo();
        }
    }
}

impl Delegation {
    /// Why `own` gives jobs none of the v2 controllers `needed`, for an
    /// error naming a limit.
    fn why_none(&self, needed: &[&str]) -> String {
        let offered = read_words(&self.own.join("cgroup.controllers"));
        if let Some(why) = &self.refused {
            if needed.iter().all(|n| offered.iter().any(|o| o == n)) {
                return why.clone();
            }
        }
        format!(
            "the runner's cgroup {} is given {} by its parent",
            self.own.display(),
            if offered.is_empty() {
                "no controller".to_owned()
            } else {
                format!("only {}", offered.join(" "))
            }
        )
    }

    /// Disable what [`pass_down`] enabled, move the runner back and remove
    /// its leaf, once no other group (another run's) is left beside the
    /// leaf. Quiet: what stays is for the last runner out, or `gc`.
    fn undo(&self) {
        if self.enabled.is_empty() && self.leaf.is_none() {
            return;
        }
        if subgroups(&self.own)
            .iter()
            .any(|s| Some(s) != self.leaf.as_ref())
        {
            return;
        }
        if !self.enabled.is_empty() {
            let off: Vec<String> = self.enabled.iter().map(|c| format!("-{c}")).collect();
            if let Err(e) = fs::write(self.own.join("cgroup.subtree_control"), off.join(" ")) {
                tracing::debug!(cgroup = %self.own.display(), error = %e, "controllers left enabled");
                return;
            }
        }
        if let Some(leaf) = &self.leaf {
            // This process and its children still there (a mount's reaper):
            // another runner sharing the leaf stays in it.
            let me = std::process::id() as i32;
            let ours = pids_in(leaf).into_iter().filter(|&p| descends_from(p, me));
            for pid in ours {
                if let Err(e) = fs::write(self.own.join("cgroup.procs"), pid.to_string()) {
                    tracing::debug!(cgroup = %self.own.display(), pid, error = %e, "not moved back");
                }
            }
            let _ = fs::remove_dir(leaf);
        }
    }
}

/// Let the runner's own v2 group `own` pass every controller it is given
/// down to the run's groups. cgroup v2 allows that only in a group without
/// processes of its own (or the root): if `own` holds the runner and its
/// children alone, move them into the leaf [`RUNNER_LEAF`] first; if it
/// holds others, leave it and say why.
fn pass_down(d: &mut Delegation) -> Result<()> {
    let own = d.own.clone();
    let offered = read_words(&own.join("cgroup.controllers"));
    let on = read_words(&own.join("cgroup.subtree_control"));
    let want: Vec<String> = offered.into_iter().filter(|c| !on.contains(c)).collect();
    if want.is_empty() {
        return Ok(());
    }
    // The root has no `cgroup.type` and no rule against processes.
    let procs = pids_in(&own);
    if own.join("cgroup.type").exists() && !procs.is_empty() {
        let me = std::process::id() as i32;
        let foreign: Vec<String> = procs
            .iter()
            .filter(|&&p| !descends_from(p, me))
            .map(|p| p.to_string())
            .collect();
        if !foreign.is_empty() {
            d.refused = Some(format!(
                "the runner's cgroup {} also holds processes not the runner's (pids {}), and \
                 cgroup v2 passes controllers down only from a group without processes: start \
                 portroot in a cgroup of its own, e.g. with systemd-run --scope -p Delegate=yes",
                own.display(),
                foreign.join(" ")
            ));
            return Ok(());
        }
        let leaf = own.join(RUNNER_LEAF);
        make_dir(&leaf)?;
        d.leaf = Some(leaf.clone());
        for pid in procs {
            match fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
                // A child that exited meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other.map_err(io("moving the runner into", &leaf))?,
            }
        }
        tracing::debug!(leaf = %leaf.display(), "runner moved into a leaf cgroup");
    }
    let plus: Vec<String> = want.iter().map(|c| format!("+{c}")).collect();
    match fs::write(own.join("cgroup.subtree_control"), plus.join(" ")) {
        Ok(()) => d.enabled = want,
        Err(e) => {
            d.refused = Some(format!(
                "enabling {} in {} failed: {e}",
                want.join(" "),
                own.join("cgroup.subtree_control").display()
            ))
        }
    }
    Ok(())
}

/// Whether process `pid` is `ancestor` or one of its descendants.
fn descends_from(pid: i32, ancestor: i32) -> bool {
    let mut p = pid;
    // A pid chain is short; the bound only guards against a cycle of
    // reused pids read mid-change.
    for _ in 0..64 {
        if p == ancestor {
            return true;
        }
        match fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| parse_ppid(&s))
        {
            Some(pp) if pp > 0 => p = pp,
            _ => return false,
        }
    }
    false
}

/// The parent pid from a `/proc/<pid>/stat` line (the 4th field; the 2nd,
/// the command name, may hold spaces and parentheses).
fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Which group serves which limit, accounting and kill: v2 where the run's
/// group passes the controller down, else the v1 hierarchy that has it.
fn roles(groups: &[Group], v2_delegated: &[String]) -> Roles {
    let v2 = groups.iter().position(|g| g.v2);
    let pick = |ctrl: &str| {
        v2.filter(|_| v2_delegated.iter().any(|c| c == ctrl))
            .or_else(|| groups.iter().position(|g| g.has(ctrl)))
    };
    Roles {
        memory: pick("memory"),
        cpu: pick("cpu"),
        pids: pick("pids"),
        // cgroup v2 always counts CPU time (`cpu.stat`), controller or not.
        cpuacct: v2.or_else(|| groups.iter().position(|g| g.has("cpuacct"))),
        v2,
        freezer: groups.iter().position(|g| g.has("freezer")),
    }
}

/// How the sandbox helper joins its job's group: written to the job's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Groups the helper puts the job's init in before the init's
    /// `unshare(CLONE_NEWCGROUP)`: they become the roots of the job's cgroup
    /// namespace. (The helper itself stays outside: it only waits.)
    pub enter: Vec<PathBuf>,
    /// Groups to move to right after, inside that namespace (v2's `ns/init`).
    pub then: Vec<PathBuf>,
    /// Where to mount the job's own cgroup2 inside the chroot, if anywhere.
    pub mount: Option<PathBuf>,
}

/// Join the groups `dirs` (this whole process: `cgroup.procs` takes `0` for
/// the writer).
pub fn join(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        write_file(&dir.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

/// The `cgroup.procs` files of the groups `dirs`, opened for writing now,
/// for [`join_opened`] once their paths are out of reach (after
/// `pivot_root`). The kernel checks a move against the cgroup namespace of
/// the opener.
pub fn open_procs(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, fs::File)>> {
    dirs.iter()
        .map(|dir| {
            let path = dir.join("cgroup.procs");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("opening", &path))?;
            Ok((path, file))
        })
        .collect()
}

/// Join the groups whose `cgroup.procs` [`open_procs`] opened.
pub fn join_opened(files: Vec<(PathBuf, fs::File)>) -> Result<()> {
    write_opened(files, "0")
}

/// Put process `pid` (of the writer's PID namespace) in the groups whose
/// `cgroup.procs` [`open_procs`] opened.
pub fn place(files: Vec<(PathBuf, fs::File)>, pid: i32) -> Result<()> {
    write_opened(files, &pid.to_string())
}

fn write_opened(files: Vec<(PathBuf, fs::File)>, what: &str) -> Result<()> {
    use std::io::Write;
    for (path, mut file) in files {
        file.write_all(what.as_bytes())
            .map_err(io("writing", &path))?;
    }
    Ok(())
}

/// One job's group in every hierarchy; [`JobCgroup::remove`] kills what is
/// left in it and removes it (dropping it does the same, quietly).
#[derive(Debug)]
pub struct JobCgroup {
    groups: Vec<Group>,
    roles: Roles,
    removed: bool,
    /// What the helper joins.
    pub spec: CgroupSpec,
}

impl JobCgroup {
    fn apply(&self, limits: &Limits) -> Result<()> {
        let at = |i: Option<usize>| i.and_then(|i| self.groups.get(i));
        if let (Some(bytes), Some(g)) = (limits.memory, at(self.roles.memory)) {
            if g.v2 {
                write_file(&g.path.join("memory.max"), &bytes.to_string())?;
                write_if_present(&g.path.join("memory.swap.max"), "0")?;
            } else {
                write_file(&g.path.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // Only after the RAM limit: memsw may never be below it.
                write_if_present(
                    &g.path.join("memory.memsw.limit_in_bytes"),
                    &bytes.to_string(),
                )?;
            }
        }
        if let (Some(cpus), Some(g)) = (limits.cpus, at(self.roles.cpu)) {
            if g.v2 {
                let max = format!("{} {CPU_PERIOD_US}", cpus.quota_us());
                write_file(&g.path.join("cpu.max"), &max)?;
            } else {
                write_file(
                    &g.path.join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                )?;
                write_file(
                    &g.path.join("cpu.cfs_quota_us"),
                    &cpus.quota_us().to_string(),
                )?;
            }
        }
        if let (Some(n), Some(g)) = (limits.pids, at(self.roles.pids)) {
            write_file(&g.path.join("pids.max"), &n.to_string())?;
        }
        Ok(())
    }

    /// What the job used so far (read it after the job ended, before
    /// [`JobCgroup::remove`]).
    pub fn usage(&self) -> Usage {
        let at = |i: Option<usize>| i.and_then(|i| self.groups.get(i));
        let mut usage = Usage::default();
        if let Some(g) = at(self.roles.cpuacct) {
            usage.cpu = if g.v2 {
                keyed(&g.path.join("cpu.stat"), "usage_usec").map(Duration::from_micros)
            } else {
                read_u64(&g.path.join("cpuacct.usage")).map(Duration::from_nanos)
            };
        }
        if let Some(g) = at(self.roles.memory) {
            if g.v2 {
                usage.peak_memory = read_u64(&g.path.join("memory.peak"));
                usage.oom_kills = keyed(&g.path.join("memory.events"), "oom_kill").unwrap_or(0);
            } else {
                usage.peak_memory = read_u64(&g.path.join("memory.max_usage_in_bytes"));
                usage.oom_kills =
                    keyed(&g.path.join("memory.oom_control"), "oom_kill").unwrap_or(0);
            }
        }
        usage
    }

    /// End the job's group once its helper exited: kill every process left
    /// in it (a daemon the job started, say), read what the job used, and
    /// remove the group, waiting at most a few seconds. The error, if any,
    /// says what could not be killed or removed.
    pub fn finish(mut self) -> (Usage, Option<Error>) {
        self.removed = true;
        let killed = kill_all(&self.groups, self.roles.v2, self.roles.freezer);
        let usage = self.usage();
        let removed = remove_all(&self.groups);
        (usage, killed.and(removed).err())
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = kill_all(&self.groups, self.roles.v2, self.roles.freezer)
                .and_then(|()| remove_all(&self.groups));
        }
    }
}

/// Kill everything in `groups` and their subgroups. `v2` and `freezer`
/// index the groups that offer `cgroup.kill` and the v1 freezer.
fn kill_all(groups: &[Group], v2: Option<usize>, freezer: Option<usize>) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let existing: Vec<&Group> = groups.iter().filter(|g| g.path.is_dir()).collect();
    if !existing.iter().any(|g| populated(g)) {
        return Ok(());
    }
    let at = |i: Option<usize>| i.and_then(|i| groups.get(i));
    kill(&existing, at(v2), at(freezer), deadline)
}

/// Remove `groups` and their subgroups, deepest first.
fn remove_all(groups: &[Group]) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    for g in groups {
        remove_tree(&g.path, deadline)?;
    }
    Ok(())
}

/// Whether any process is in `g` or below it.
fn populated(g: &Group) -> bool {
    if g.v2 {
        return keyed(&g.path.join("cgroup.events"), "populated") != Some(0);
    }
    !pids_below(&g.path).is_empty()
}

fn kill(
    groups: &[&Group],
    v2: Option<&Group>,
    freezer: Option<&Group>,
    deadline: Instant,
) -> Result<()> {
    // cgroup.kill (Linux 5.14) kills the whole subtree at once, including
    // processes forking meanwhile.
    if let Some(g) = v2.filter(|g| g.path.join("cgroup.kill").exists()) {
        write_file(&g.path.join("cgroup.kill"), "1")?;
        if wait_until(deadline, || !populated(g)) {
            // v1 hierarchies hold the same processes, being reaped now.
            return wait_empty(groups, deadline);
        }
    }
    // v1: freeze first so nothing forks past the signals, then kill every pid.
    let frozen = freezer.is_some_and(|g| {
        write_file(&g.path.join("freezer.state"), "FROZEN").is_ok()
            && wait_until(deadline, || {
                fs::read_to_string(g.path.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            })
    });
    loop {
        let pids: Vec<i32> = groups.iter().flat_map(|g| pids_below(&g.path)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // A pid read from the group belongs to a process in it until
            // that process is reaped; a frozen one cannot exit meanwhile.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if frozen {
            if let Some(g) = freezer {
                let _ = write_file(&g.path.join("freezer.state"), "THAWED");
            }
        }
        if Instant::now() > deadline {
            return Err(left_behind(groups));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some(g) = freezer.filter(|_| frozen) {
        let _ = write_file(&g.path.join("freezer.state"), "THAWED");
    }
    Ok(())
}

fn wait_empty(groups: &[&Group], deadline: Instant) -> Result<()> {
    if wait_until(deadline, || groups.iter().all(|g| !populated(g))) {
        Ok(())
    } else {
        Err(left_behind(groups))
    }
}

fn left_behind(groups: &[&Group]) -> Error {
    let path = groups.first().map(|g| g.path.clone()).unwrap_or_default();
    Error::Invalid(format!(
        "processes of {} survived SIGKILL for {} s",
        path.display(),
        KILL_TIMEOUT.as_secs()
    ))
}

/// Poll `done` until it holds (true) or `deadline` passes (false).
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_micros(100);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// The pids in the group at `dir` itself.
fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Every pid in the group at `dir` and its subgroups.
fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = pids_in(dir);
    for sub in subgroups(dir) {
        pids.extend(pids_below(&sub));
    }
    pids
}

fn subgroups(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Remove the group at `dir` and its subgroups (what the job made, such as
/// portage's), deepest first. An emptied group may stay busy for a moment
/// while its last processes are reaped: retry until `deadline`.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    for sub in subgroups(dir) {
        remove_tree(&sub, deadline)?;
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(io("removing cgroup", dir)(e)),
        }
    }
}

/// Remove the run groups at `paths` (from a dead run's `run.json`), killing
/// whatever is still in them. The runner's leaf among them is only removed
/// once empty (another runner may share it), and its parent's controllers
/// disabled once nothing is left below it.
pub fn remove_run_groups(paths: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    for path in paths.iter().filter(|p| p.is_dir()) {
        if path.file_name() == Some(RUNNER_LEAF.as_ref()) {
            remove_leaf(path);
            continue;
        }
        let g = Group {
            v2: path.join("cgroup.events").exists(),
            controllers: Vec::new(),
            path: path.clone(),
        };
        if populated(&g) {
            let v2 = g.path.join("cgroup.kill").exists().then_some(&g);
            kill(&[&g], v2, None, deadline)?;
        }
        remove_tree(path, deadline)?;
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// A dead runner's leaf: remove it if empty, and then, if nothing else is
/// left in its parent (the runner's group), disable what the parent passed
/// down (the runner enabled it: a group with processes has none enabled).
fn remove_leaf(leaf: &Path) {
    if !pids_in(leaf).is_empty() || fs::remove_dir(leaf).is_err() {
        return;
    }
    let Some(own) = leaf.parent() else { return };
    if !subgroups(own).is_empty() {
        return;
    }
    let off: Vec<String> = read_words(&own.join("cgroup.subtree_control"))
        .iter()
        .map(|c| format!("-{c}"))
        .collect();
    if !off.is_empty() {
        let _ = fs::write(own.join("cgroup.subtree_control"), off.join(" "));
    }
}

/// Enable every controller `dir` is given for its children. Refused
/// (EBUSY) when `dir` holds processes itself and is not the root: then its
/// children get none, which [`RunCgroup::create`] reports if a limit needs one.
fn enable_controllers(dir: &Path) {
    let have = read_words(&dir.join("cgroup.controllers"));
    let on = read_words(&dir.join("cgroup.subtree_control"));
    let want: Vec<String> = have
        .iter()
        .filter(|c| !on.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return;
    }
    if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), want.join(" ")) {
        tracing::debug!(cgroup = %dir.display(), error = %e, "controllers not passed down");
    }
}

fn make_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating cgroup", path)(e)),
    }
}

/// `mkdir -p`, retried: a run ending meanwhile may remove `portroot/`
/// between our two mkdirs.
fn make_dir_all(path: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            Err(e) => return Err(io("creating cgroup", path)(e)),
        }
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io("writing", path))
}

fn write_if_present(path: &Path, value: &str) -> Result<()> {
    match fs::write(path, value) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io("writing", path)),
    }
}

fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file such as `cpu.stat` or `memory.events`.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&fs::read_to_string(path).ok()?, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys rw shared:2 - sysfs sysfs rw
31 30 0:27 / /sys/fs/cgroup rw shared:3 - tmpfs tmpfs rw,mode=755
32 31 0:28 / /sys/fs/cgroup/unified rw shared:4 - cgroup2 cgroup2 rw
33 31 0:29 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory
34 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw shared:6 - cgroup cgroup rw,cpu,cpuacct
35 31 0:31 / /sys/fs/cgroup/systemd rw shared:7 - cgroup cgroup rw,xattr,name=systemd
36 31 0:32 / /sys/fs/cgroup/freezer rw shared:8 - cgroup cgroup rw,freezer
";
    const HYBRID_SELF: &str = "\
5:freezer:/
4:cpu,cpuacct:/user.slice
3:memory:/process_api/abc
1:name=systemd:/user.slice/session-1.scope
0::/user.slice/session-1.scope
";

    #[test]
    fn hybrid_host_uses_v2_and_the_v1_controllers() {
        let mounts = parse_mountinfo(HYBRID);
        let procs = parse_proc_cgroup(HYBRID_SELF);
        let h = find_hierarchies(&mounts, &procs, &|_| true);
        let got: Vec<_> = h
            .iter()
            .map(|h| (h.own.to_str().unwrap(), h.v1.clone().map(|c| c.join(","))))
            .collect();
        assert_eq!(
            got,
            [
                ("/sys/fs/cgroup/unified/user.slice/session-1.scope", None),
                ("/sys/fs/cgroup/freezer", Some("freezer".into())),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/user.slice",
                    Some("cpu,cpuacct".into())
                ),
                (
                    "/sys/fs/cgroup/memory/process_api/abc",
                    Some("memory".into())
                ),
            ]
        );
    }

    #[test]
    fn a_later_mount_hides_the_earlier_ones_and_mount_roots_count() {
        // cgroup2 mounted over the tmpfs in a private namespace (the tests'
        // v2 setup), the v1 mounts below it now unreachable; and a mount
        // whose root is the runner's own cgroup (a container's view).
        let text = format!(
            "{HYBRID}40 31 0:28 /user.slice /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n"
        );
        let mounts = parse_mountinfo(&text);
        assert_eq!(
            mounts
                .iter()
                .filter(|m| m.mountpoint == Path::new("/sys/fs/cgroup"))
                .count(),
            1
        );
        let procs = parse_proc_cgroup(HYBRID_SELF);
        let top_only = |m: &CgroupMount| m.mountpoint == Path::new("/sys/fs/cgroup");
        let h = find_hierarchies(&mounts, &procs, &top_only);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].own, Path::new("/sys/fs/cgroup/session-1.scope"));
        assert_eq!(h[0].v1, None);
    }

    #[test]
    fn mountinfo_unescapes_paths() {
        let text = "40 31 0:28 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text)[0].mountpoint,
            Path::new("/mnt/cg two")
        );
    }

    #[test]
    fn roles_prefer_delegated_v2_controllers_else_v1() {
        let g = |v2: bool, c: &[&str]| Group {
            v2,
            controllers: c.iter().map(|s| s.to_string()).collect(),
            path: "/x".into(),
        };
        let groups = [
            g(true, &[]),
            g(false, &["memory"]),
            g(false, &["cpu", "cpuacct"]),
        ];
        let r = roles(&groups, &[]);
        assert_eq!(
            (r.memory, r.cpu, r.pids, r.cpuacct, r.v2),
            (Some(1), Some(2), None, Some(0), Some(0))
        );
        let r = roles(&groups, &["memory".into(), "pids".into()]);
        assert_eq!((r.memory, r.cpu, r.pids), (Some(0), Some(2), Some(0)));
    }

    #[test]
    fn cpus_parse_and_show() {
        assert_eq!(Cpus::parse("2").unwrap().quota_us(), 200_000);
        assert_eq!(Cpus::parse("0.5").unwrap().quota_us(), 50_000);
        assert_eq!(Cpus::parse(".25").unwrap().to_string(), "0.25");
        assert_eq!(Cpus::parse("1.500").unwrap().to_string(), "1.5");
        for bad in ["", ".", "x", "-1", "0", "0.001", "1.2345", "5000", "1e3"] {
            assert!(Cpus::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ppid_of_a_stat_line_with_parentheses_in_the_name() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn the_runner_descends_from_itself_and_its_parent_not_from_a_child() {
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        assert!(descends_from(me, me));
        assert!(descends_from(me, parent));
        assert!(!descends_from(parent, me));
    }

    #[test]
    fn keyed_files() {
        let text = "usage_usec 1234\nuser_usec 1000\n";
        assert_eq!(parse_keyed(text, "usage_usec"), Some(1234));
        assert_eq!(parse_keyed(text, "usage"), None);
        assert_eq!(parse_keyed("oom 0\noom_kill 2\n", "oom_kill"), Some(2));
    }
}
