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
