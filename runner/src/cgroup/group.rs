//! One hierarchy's directory of a run or a job, and what is done to such
//! directories: kill everything in them, wait, remove them deepest first,
//! read and write their files.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

/// The leaf a runner moves itself into on cgroup v2 when its own group must
/// pass controllers down (see [`pass_down`]).
pub const RUNNER_LEAF: &str = "portroot-runner";

/// How long killing and removing a job's group may take before it is
/// reported as left behind.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// One hierarchy's directory of a run or a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Group {
    /// Whether the hierarchy is cgroup v2.
    pub(super) v2: bool,
    /// The v1 controllers of the hierarchy (empty for v2).
    pub(super) controllers: Vec<String>,
    /// The directory.
    pub(super) path: PathBuf,
}

impl Group {
    pub(super) fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Which group of a run (an index into its groups) serves what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Roles {
    pub(super) memory: Option<usize>,
    pub(super) cpu: Option<usize>,
    pub(super) pids: Option<usize>,
    pub(super) cpuacct: Option<usize>,
    /// A v2 group whose jobs have `cgroup.kill`.
    pub(super) v2: Option<usize>,
    pub(super) freezer: Option<usize>,
}

/// Which group serves which limit, accounting and kill: v2 where the run's
/// group passes the controller down, else the v1 hierarchy that has it.
pub(super) fn roles(groups: &[Group], v2_delegated: &[String]) -> Roles {
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

/// Kill everything in `groups` and their subgroups. `v2` and `freezer`
/// index the groups that offer `cgroup.kill` and the v1 freezer.
pub(super) fn kill_all(groups: &[Group], v2: Option<usize>, freezer: Option<usize>) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let existing: Vec<&Group> = groups.iter().filter(|g| g.path.is_dir()).collect();
    if !existing.iter().any(|g| populated(g)) {
        return Ok(());
    }
    let at = |i: Option<usize>| i.and_then(|i| groups.get(i));
    kill(&existing, at(v2), at(freezer), deadline)
}

/// Remove `groups` and their subgroups, deepest first.
pub(super) fn remove_all(groups: &[Group]) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    for g in groups {
        remove_tree(&g.path, deadline)?;
    }
    Ok(())
}

/// Whether any process is in `g` or below it.
pub(super) fn populated(g: &Group) -> bool {
    if g.v2 {
        return keyed(&g.path.join("cgroup.events"), "populated") != Some(0);
    }
    !pids_below(&g.path).is_empty()
}

pub(super) fn kill(
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

pub(super) fn wait_empty(groups: &[&Group], deadline: Instant) -> Result<()> {
    if wait_until(deadline, || groups.iter().all(|g| !populated(g))) {
        Ok(())
    } else {
        Err(left_behind(groups))
    }
}

pub(super) fn left_behind(groups: &[&Group]) -> Error {
    let path = groups.first().map(|g| g.path.clone()).unwrap_or_default();
    Error::Invalid(format!(
        "processes of {} survived SIGKILL for {} s",
        path.display(),
        KILL_TIMEOUT.as_secs()
    ))
}

/// Poll `done` until it holds (true) or `deadline` passes (false).
pub(super) fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
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
pub(super) fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Every pid in the group at `dir` and its subgroups.
pub(super) fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = pids_in(dir);
    for sub in subgroups(dir) {
        pids.extend(pids_below(&sub));
    }
    pids
}

pub(super) fn subgroups(dir: &Path) -> Vec<PathBuf> {
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
pub(super) fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
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
pub(super) fn remove_leaf(leaf: &Path) {
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
pub(super) fn enable_controllers(dir: &Path) {
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

pub(super) fn make_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating cgroup", path)(e)),
    }
}

/// `mkdir -p`, retried: a run ending meanwhile may remove `portroot/`
/// between our two mkdirs.
pub(super) fn make_dir_all(path: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            Err(e) => return Err(io("creating cgroup", path)(e)),
        }
    }
}

pub(super) fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io("writing", path))
}

pub(super) fn write_if_present(path: &Path, value: &str) -> Result<()> {
    match fs::write(path, value) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io("writing", path)),
    }
}

pub(super) fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub(super) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file such as `cpu.stat` or `memory.events`.
pub(super) fn keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&fs::read_to_string(path).ok()?, key)
}

pub(super) fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn keyed_files() {
        let text = "usage_usec 1234\nuser_usec 1000\n";
        assert_eq!(parse_keyed(text, "usage_usec"), Some(1234));
        assert_eq!(parse_keyed(text, "usage"), None);
        assert_eq!(parse_keyed("oom 0\noom_kill 2\n", "oom_kill"), Some(2));
    }
}
