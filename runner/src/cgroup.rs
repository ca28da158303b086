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

mod delegation;
mod detect;
mod group;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::delegation::{pass_down, Delegation};
use self::detect::SYS_PREFIX;
pub use self::detect::{detect_hierarchies, Hierarchy};
use self::group::{
    enable_controllers, keyed, kill_all, make_dir, make_dir_all, read_u64, read_words, remove_all,
    roles, write_file, write_if_present, Group, Roles,
};
pub use self::group::{remove_run_groups, RUNNER_LEAF};
use crate::error::{io, Error, Result};

/// The period every CPU quota is given in, microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

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

#[cfg(test)]
mod tests {

    use super::*;

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
}
