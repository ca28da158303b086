//! A run handed to other machines: what the submitter writes into the shared
//! run directory and what each node's task writes back. Only ids travel —
//! the stage's sha256, each tree's commit, each layer's creation id — so a
//! node never runs against something that merely has the same name.
//!
//! ```text
//! SHARED/RUN-ID/spec.json          RemoteSpec: pinned ids, settings, jobs
//! SHARED/RUN-ID/job.sh             the batch script sbatch runs per task
//! SHARED/RUN-ID/jobs/INDEX/log     the job's log, copied from the node
//! SHARED/RUN-ID/jobs/INDEX/result.json   TaskResult, written last
//! SHARED/RUN-ID/jobs/INDEX/slurm.out     what the task itself printed
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use portroot_runner::cgroup::Limits;
use portroot_runner::conf::{self, Feature, MirrorUrl, TreeLayout};
use portroot_runner::digest::StageDigest;
use portroot_runner::job::{Job, JobOutcome};
use portroot_runner::plan::TmpfsMount;
use portroot_runner::sandbox::Network;
use serde::{Deserialize, Serialize};

use super::pin::{Pinned, Settings};

/// A tree pinned to its commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedTree {
    /// `gentoo` for the main tree, else the `--repo-ref` name.
    pub name: String,
    /// The commit (or tree) id the submitter resolved.
    pub commit: String,
    /// The ref as the user named it, for the table only.
    pub reference: String,
}

/// A layer pinned to its creation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedLayer {
    /// Its name in the store.
    pub name: String,
    /// `layer.json`'s unique creation id.
    pub id: String,
    /// The sha256 of the layer's `layer export` file, if the run names
    /// where a node gets it.
    #[serde(default)]
    pub digest: Option<String>,
    /// Where a node lacking the layer fetches that file.
    #[serde(default)]
    pub url: Option<String>,
}

/// The chroot settings that travel (the node's own configuration decides
/// the main repository's store name and how trees are mounted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipped {
    /// Where the main tree goes.
    pub layout: TreeLayout,
    /// The jobs' network.
    pub network: Network,
    /// The `local` mirror.
    pub local_mirror: Option<MirrorUrl>,
    /// FEATURES words.
    pub features: Vec<Feature>,
    /// make.conf lines.
    pub make_conf_lines: Vec<String>,
    /// DISTDIR on every node (a shared path).
    pub distfiles: PathBuf,
    /// PKGDIR on every node: the shared binhost directory.
    pub binpkgs: PathBuf,
    /// Each job's limits.
    pub limits: Limits,
    /// tmpfs mounts per job.
    pub tmpfs: Vec<TmpfsMount>,
}

/// Everything a node needs to run one job of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// The run id (also the shared directory's name).
    pub id: String,
    /// The stage's sha256.
    pub stage: StageDigest,
    /// Where a node lacking the stage fetches it (checked against `stage`).
    pub stage_url: Option<String>,
    /// The team git remote a node lacking the main tree's commit fetches
    /// snapshots from (`snapshot fetch`); the commit is checked after.
    #[serde(default)]
    pub tree_remote: Option<String>,
    /// Every tree, the main one first.
    pub trees: Vec<PinnedTree>,
    /// The layers, bottom first.
    pub layers: Vec<PinnedLayer>,
    /// The chroots' settings.
    pub settings: Shipped,
    /// The jobs; task INDEX runs `jobs[INDEX]`.
    pub jobs: Vec<Job>,
    /// The run this one retries, if any.
    pub retry_of: Option<String>,
}

/// What a task writes back, last, so that its presence means "done".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The node it ran on (`SLURMD_NODENAME`, else the host name).
    pub node: String,
    /// How the job went; its `log` is the shared copy.
    pub outcome: JobOutcome,
    /// Why the job could not start on this node (an input it could not get).
    pub reason: Option<String>,
    /// What the node fetched for this task (`stage DIGEST`), empty when it
    /// had everything.
    pub fetched: Vec<String>,
}

impl RemoteSpec {
    /// The spec of a run over `pinned` inputs.
    pub fn new(id: &str, pinned: &Pinned, stage_url: Option<String>, jobs: Vec<Job>) -> Self {
        RemoteSpec {
            id: id.to_owned(),
            stage: pinned.stage.stage.digest.clone(),
            stage_url,
            tree_remote: None,
            trees: pinned
                .trees
                .iter()
                .map(|t| PinnedTree {
                    name: t.name.clone(),
                    commit: t.commit.clone().unwrap_or_else(|| t.reference.clone()),
                    reference: t.reference.clone(),
                })
                .collect(),
            layers: pinned
                .layers
                .layers
                .iter()
                .map(|l| PinnedLayer {
                    name: l.record.name.clone(),
                    id: l.record.id.clone(),
                    digest: None,
                    url: None,
                })
                .collect(),
            settings: Shipped {
                layout: layout_of(pinned),
                network: pinned.network,
                local_mirror: pinned.conf.local_mirror.clone(),
                features: pinned.conf.features.clone(),
                make_conf_lines: pinned.conf.make_conf_lines.clone(),
                distfiles: cache_source(pinned, conf::DISTDIR),
                binpkgs: cache_source(pinned, conf::PKGDIR),
                limits: pinned.limits,
                tmpfs: pinned.tmpfs.clone(),
            },
            jobs,
            retry_of: None,
        }
    }

    /// The settings a node pins with: the shipped ones, the node's main
    /// repository and mount options, every tree named by its commit.
    pub fn settings(&self, main_repo: String, mount: portroot_fs::MountOptions) -> Settings {
        let s = &self.settings;
        Settings {
            layout: s.layout,
            network: s.network,
            local_mirror: s.local_mirror.clone(),
            features: s.features.clone(),
            make_conf_lines: s.make_conf_lines.clone(),
            distfiles: s.distfiles.clone(),
            binpkgs: s.binpkgs.clone(),
            // Every task is a run of its own: they share PKGDIR, as local
            // parallel jobs do, rather than each making a generation.
            binhost: false,
            main_repo,
            limits: s.limits,
            tmpfs: s.tmpfs.clone(),
            layers: self.layers.iter().map(|l| l.name.clone()).collect(),
            repo_refs: self
                .trees
                .iter()
                .skip(1)
                .map(|t| format!("{}={}", t.name, t.commit))
                .collect(),
            mount,
        }
    }

    /// Read `DIR/spec.json`.
    pub fn load(dir: &Path) -> anyhow::Result<RemoteSpec> {
        let path = dir.join("spec.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Write `DIR/spec.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("spec.json");
        let text = serde_json::to_vec_pretty(self).context("serializing the run spec")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// The host directory bound at `target` (DISTDIR or PKGDIR).
fn cache_source(pinned: &Pinned, target: &str) -> PathBuf {
    pinned
        .caches
        .iter()
        .find(|b| b.target == Path::new(target))
        .map(|b| b.source.clone())
        .unwrap_or_default()
}

/// The main tree's layout, from where the pinned conf puts `gentoo`.
fn layout_of(pinned: &Pinned) -> TreeLayout {
    let usr = TreeLayout::UsrPortage;
    match pinned.conf.repos.first() {
        Some(r) if r.location == usr.main_location() => usr,
        _ => TreeLayout::Modern,
    }
}

/// `DIR/jobs/INDEX/`.
pub fn task_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join("jobs").join(index.to_string())
}

/// Write a task's result (through a temp file and a rename: the file's
/// presence means the task is done).
pub fn save_result(dir: &Path, index: usize, result: &TaskResult) -> anyhow::Result<()> {
    let tdir = task_dir(dir, index);
    let tmp = tdir.join(".result.json.tmp");
    let path = tdir.join("result.json");
    let text = serde_json::to_vec_pretty(result).context("serializing a task result")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}

/// A task's result, if it wrote one.
pub fn load_result(dir: &Path, index: usize) -> Option<TaskResult> {
    let text = std::fs::read(task_dir(dir, index).join("result.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// What the submitter keeps of a Slurm run in its own store
/// (`slurm-runs/ID.json`), for `portroot runs`: where the run's shared
/// directory is and the table's sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmRunRecord {
    /// The run id.
    pub id: String,
    /// `SHARED/ID/`, where the spec, the logs and the results are.
    pub dir: PathBuf,
    /// The array's Slurm job id.
    pub job_id: String,
    /// Submitted, seconds since the epoch.
    pub start: u64,
    /// The stage's sha256.
    pub stage: String,
    /// The main tree's reference and commit.
    pub tree: String,
    /// Jobs in the run.
    pub jobs: usize,
    /// Jobs that succeeded.
    pub ok: usize,
    /// `ok`, `failed` or `interrupted`.
    pub state: String,
    /// The run it retried, if any.
    pub retry_of: Option<String>,
}

/// `STORE/slurm-runs/`.
pub fn records_dir(store_root: &Path) -> PathBuf {
    store_root.join("slurm-runs")
}

/// Write `STORE/slurm-runs/ID.json` (through a rename).
pub fn save_record(store_root: &Path, rec: &SlurmRunRecord) -> anyhow::Result<()> {
    let dir = records_dir(store_root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.json.new", rec.id));
    let path = dir.join(format!("{}.json", rec.id));
    let text = serde_json::to_vec_pretty(rec).context("serializing a run record")?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))
}

/// Every Slurm run recorded in the store, oldest first (unreadable records
/// left out).
pub fn load_records(store_root: &Path) -> Vec<SlurmRunRecord> {
    let Ok(rd) = std::fs::read_dir(records_dir(store_root)) else {
        return Vec::new();
    };
    let mut out: Vec<SlurmRunRecord> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|t| serde_json::from_slice(&t).ok())
        .collect();
    out.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
    out
}
