//! `run.scheduler` and the `[slurm]` section: where `portroot run
//! --scheduler slurm` submits, what every node runs and where the tasks
//! write. Kept apart from `config.rs` so that file stays one screenful of
//! keys per section.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::values::{absolute_path, toml_string};

/// `run.scheduler` and `--scheduler`: who runs the jobs of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// This machine's CPUs, a pool of chroots (the default).
    Local,
    /// One Slurm array job, one task per job, each on some node.
    Slurm,
}

impl Scheduler {
    /// The word the config and the flag use.
    pub fn word(self) -> &'static str {
        match self {
            Scheduler::Local => "local",
            Scheduler::Slurm => "slurm",
        }
    }
}

/// `[slurm]`: how a run goes through Slurm.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `sbatch --partition`.
    #[serde(default, deserialize_with = "word")]
    pub partition: Option<String>,
    /// `sbatch --account`.
    #[serde(default, deserialize_with = "word")]
    pub account: Option<String>,
    /// Further `sbatch` arguments, each one argument.
    #[serde(default, deserialize_with = "options")]
    pub sbatch_options: Option<Vec<String>>,
    /// A directory every node can write (absolute): runs land in
    /// `SHARED/<run-id>/`.
    #[serde(default, deserialize_with = "absolute_path")]
    pub shared_dir: Option<PathBuf>,
    /// The store the nodes run against (`--store` on the nodes, absolute).
    #[serde(default, deserialize_with = "absolute_path")]
    pub store: Option<PathBuf>,
    /// Where `sbatch`, `squeue` and `scancel` are (absolute); else `PATH`.
    #[serde(default, deserialize_with = "absolute_path")]
    pub bin_dir: Option<PathBuf>,
    /// The portroot binary on the nodes (absolute); else this one's path.
    #[serde(default, deserialize_with = "absolute_path")]
    pub portroot: Option<PathBuf>,
    /// The team git remote nodes fetch missing snapshots from.
    #[serde(default, deserialize_with = "remote")]
    pub tree_remote: Option<String>,
    /// How long the submitter waits for the array, in seconds (the config
    /// takes `3600` or `"90s"`, `"30m"`, `"12h"`, `"2d"`); past it the array
    /// is cancelled and the run fails. None: until Slurm ends every task.
    #[serde(default, deserialize_with = "max_wait")]
    pub max_wait: Option<u64>,
}

impl SlurmConfig {
    /// `self` with every key `over` sets replaced by `over`'s value.
    pub fn merge(self, over: SlurmConfig) -> SlurmConfig {
        SlurmConfig {
            partition: over.partition.or(self.partition),
            account: over.account.or(self.account),
            sbatch_options: over.sbatch_options.or(self.sbatch_options),
            shared_dir: over.shared_dir.or(self.shared_dir),
            store: over.store.or(self.store),
            bin_dir: over.bin_dir.or(self.bin_dir),
            portroot: over.portroot.or(self.portroot),
            tree_remote: over.tree_remote.or(self.tree_remote),
            max_wait: over.max_wait.or(self.max_wait),
        }
    }

    /// Every key as `(dotted name, value as TOML)`, for `config show`.
    pub fn entries(&self) -> Vec<(&'static str, Option<String>)> {
        let quoted = |s: &str| toml_string(s);
        let path = |p: &PathBuf| toml_string(&p.to_string_lossy());
        vec![
            ("slurm.partition", self.partition.as_deref().map(quoted)),
            ("slurm.account", self.account.as_deref().map(quoted)),
            (
                "slurm.sbatch_options",
                self.sbatch_options.as_deref().map(|o| {
                    let inner: Vec<String> = o.iter().map(|s| quoted(s)).collect();
                    format!("[{}]", inner.join(", "))
                }),
            ),
            ("slurm.shared_dir", self.shared_dir.as_ref().map(path)),
            ("slurm.store", self.store.as_ref().map(path)),
            ("slurm.bin_dir", self.bin_dir.as_ref().map(path)),
            ("slurm.portroot", self.portroot.as_ref().map(path)),
            ("slurm.tree_remote", self.tree_remote.as_deref().map(quoted)),
            ("slurm.max_wait", self.max_wait.map(|s| s.to_string())),
        ]
    }
}

/// A partition or account name: one non-empty word.
fn word<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let w = String::deserialize(d)?;
    if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(serde::de::Error::custom(format!(
            "{w:?} must be one word without spaces"
        )));
    }
    Ok(Some(w))
}

/// `sbatch_options`: arguments, none empty, none on two lines.
fn options<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let opts = Vec::<String>::deserialize(d)?;
    if let Some(bad) = opts.iter().find(|o| o.is_empty() || o.contains('\n')) {
        return Err(serde::de::Error::custom(format!(
            "sbatch option {bad:?} must be one non-empty line"
        )));
    }
    Ok(Some(opts))
}

/// `tree_remote`: a git remote as `snapshot fetch` takes it (an absolute
/// path or a URL), on one line.
fn remote<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let r = String::deserialize(d)?;
    if !(r.starts_with('/') || r.contains("://")) || r.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(format!(
            "remote {r:?} must be an absolute path or a URL"
        )));
    }
    Ok(Some(r))
}

/// `max_wait`: seconds, as a positive integer or a string of digits with
/// `s`, `m`, `h` or `d`.
fn max_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wait {
        Secs(u64),
        Text(String),
    }
    let secs = match Wait::deserialize(d)? {
        Wait::Secs(s) => Some(s),
        Wait::Text(t) => parse_duration(&t),
    };
    match secs {
        Some(s) if s > 0 => Ok(Some(s)),
        _ => Err(serde::de::Error::custom(
            "max_wait must be a positive number of seconds or like \"90s\", \"30m\", \"12h\", \"2d\"",
        )),
    }
}

/// `"90s"`, `"30m"`, `"12h"`, `"2d"` or `"90"` in seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_seconds() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("2d"), Some(172_800));
        for bad in ["", "h", "1.5h", "-3s", "3w", "1 h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn max_wait_takes_seconds_or_a_duration() {
        let c: SlurmConfig = toml::from_str("max_wait = \"12h\"").unwrap();
        assert_eq!(c.max_wait, Some(43_200));
        let c: SlurmConfig = toml::from_str("max_wait = 5").unwrap();
        assert_eq!(c.max_wait, Some(5));
        assert!(toml::from_str::<SlurmConfig>("max_wait = 0").is_err());
        assert!(toml::from_str::<SlurmConfig>("max_wait = \"soon\"").is_err());
    }
}
