//! What the runner does to its own v2 group so that it can pass controllers
//! down to the run's groups, and undoes when the run ends.

use std::fs;
use std::path::PathBuf;

use super::group::{make_dir, pids_in, read_words, subgroups, RUNNER_LEAF};
use crate::error::{io, Result};

/// What [`pass_down`] did to the runner's own v2 group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Delegation {
    /// The runner's group.
    pub(super) own: PathBuf,
    /// The controllers it enabled in `own`'s `cgroup.subtree_control`.
    pub(super) enabled: Vec<String>,
    /// The leaf it moved into, if it did.
    pub(super) leaf: Option<PathBuf>,
    /// Why `own` passes no controllers down, if it does not.
    pub(super) refused: Option<String>,
}

impl Delegation {
    /// Why `own` gives jobs none of the v2 controllers `needed`, for an
    /// error naming a limit.
    pub(super) fn why_none(&self, needed: &[&str]) -> String {
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
    pub(super) fn undo(&self) {
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
pub(super) fn pass_down(d: &mut Delegation) -> Result<()> {
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
pub(super) fn descends_from(pid: i32, ancestor: i32) -> bool {
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
pub(super) fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
