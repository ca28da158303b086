//! Finding the mounted cgroup hierarchies and the runner's own cgroup in
//! each, from `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{io, Result};

/// The v1 controllers a job gets a group in, where mounted.
pub(super) const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];

/// Where a job's cgroup v2 hierarchy is mounted inside its chroot, when the
/// host mounts it under `/sys`.
pub(super) const SYS_PREFIX: &str = "/sys";

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
pub(super) struct CgroupMount {
    /// The mount's root within its hierarchy (the 4th field).
    pub(super) root: PathBuf,
    pub(super) mountpoint: PathBuf,
    /// `None` for cgroup2; the super options (controllers, `name=`) for v1.
    pub(super) v1: Option<Vec<String>>,
    /// `major:minor` of the hierarchy.
    pub(super) dev: (u32, u32),
}

/// The cgroup mounts of `mountinfo` (proc(5)); of several on one mount
/// point only the last, which hides the others.
pub(super) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
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
pub(super) fn unescape(field: &str) -> String {
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
pub(super) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
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
pub(super) fn find_hierarchies(
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
}
