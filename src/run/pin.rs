//! Step 1 of a run: the inputs checked, leased and pinned before the store
//! or the system is touched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use portroot_runner::cgroup::Limits;
use portroot_runner::conf::{self, ChrootConf, Feature, MirrorUrl, RepoConf, TreeLayout};
use portroot_runner::layer::{LayerLease, LayerStore};
use portroot_runner::plan::{Bind, TmpfsMount};
use portroot_runner::run::TreeRecord;
use portroot_runner::sandbox::{self, Network};
use portroot_runner::stage::{StageLease, StageStore};

use crate::store::Store;

/// What the chroots of a run are made of besides the stage and the tag, as
/// the command's flags and the configuration decided.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the main tree goes.
    pub layout: TreeLayout,
    /// The jobs' network.
    pub network: Network,
    /// The `local` mirror written into portage's mirrors file.
    pub local_mirror: Option<MirrorUrl>,
    /// FEATURES words after portroot's own.
    pub features: Vec<Feature>,
    /// Lines appended to make.conf (each already checked).
    pub make_conf_lines: Vec<String>,
    /// The host directory shared as DISTDIR.
    pub distfiles: PathBuf,
    /// The host directory shared as PKGDIR, or with `binhost` the binhost
    /// whose new generation is.
    pub binpkgs: PathBuf,
    /// `binpkgs` is a binhost of generations: each run writes a new one
    /// (see `portroot_runner::binhost`).
    pub binhost: bool,
    /// The store repository served as the gentoo tree.
    pub main_repo: String,
    /// Each job's limits.
    pub limits: Limits,
    /// A fresh tmpfs per job over each of these.
    pub tmpfs: Vec<TmpfsMount>,
    /// The layers over the stage, bottom first.
    pub layers: Vec<String>,
    /// Further repositories, `NAME=REF` as the user wrote them.
    pub repo_refs: Vec<String>,
    /// How the trees are mounted.
    pub mount: portroot_fs::MountOptions,
}

/// A run's inputs, pinned: held until the value is dropped.
pub struct Pinned {
    /// The stage as the user named it.
    pub stage_name: String,
    /// The stage, leased.
    pub stage: StageLease,
    /// The layers, leased in order over the stage.
    pub layers: LayerLease,
    /// Every tree, its ref resolved to a commit.
    pub trees: Vec<TreeRecord>,
    /// DISTDIR and PKGDIR.
    pub caches: Vec<Bind>,
    /// The binhost of generations PKGDIR is made in, if any: the run binds
    /// its new generation there instead of the directory itself.
    pub binhost: Option<PathBuf>,
    /// The portage configuration written into every chroot.
    pub conf: ChrootConf,
    /// The jobs' network.
    pub network: Network,
    /// Each job's limits.
    pub limits: Limits,
    /// A fresh tmpfs per job over each of these.
    pub tmpfs: Vec<TmpfsMount>,
    /// How the trees are mounted.
    pub mount: portroot_fs::MountOptions,
}

/// Check and pin a run's inputs: the stage `stage_name` (name or digest)
/// with a usable shell, the layers over it, the main tree at `tag` and every
/// `--repo-ref`. The trees' mount points are left empty: they lie in the run
/// directory, named when the run starts ([`RunRecord::place_trees`]).
///
/// [`RunRecord::place_trees`]: portroot_runner::run::RunRecord::place_trees
pub fn pin(
    store: &Store,
    stage_name: &str,
    tag: &str,
    settings: &Settings,
) -> anyhow::Result<Pinned> {
    let stage = lease_stage(store, stage_name)?;
    sandbox::check_shell(&stage.stage.rootfs).with_context(|| format!("stage {stage_name}"))?;
    let layers = lease_layers(store, &stage.stage.digest, &settings.layers)?;
    let mut trees = Vec::new();
    for (name, reference, target) in wanted_trees(tag, settings)? {
        // The main tree is `gentoo` inside the chroot whichever store
        // repository (the config's `repo`) holds it.
        let git_dir = match name.as_str() {
            "gentoo" => store.repo_path(&settings.main_repo),
            _ => store.repo_path(&name),
        };
        let commit = resolve_ref(&git_dir, &name, &reference)?;
        trees.push(TreeRecord {
            mountpoint: PathBuf::new(),
            name,
            git_dir,
            reference,
            commit: Some(commit),
            target,
        });
    }
    let conf = ChrootConf {
        repos: trees
            .iter()
            .map(|t| RepoConf {
                name: t.name.clone(),
                location: t.target.clone(),
            })
            .collect(),
        distdir: conf::DISTDIR.into(),
        pkgdir: conf::PKGDIR.into(),
        local_mirror: settings.local_mirror.clone(),
        resolv_conf: None,
        features: settings.features.clone(),
        make_conf_lines: settings.make_conf_lines.clone(),
    };
    let caches = vec![
        Bind {
            source: settings.distfiles.clone(),
            target: conf::DISTDIR.into(),
            writable: true,
        },
        Bind {
            source: settings.binpkgs.clone(),
            target: conf::PKGDIR.into(),
            writable: true,
        },
    ];
    Ok(Pinned {
        stage_name: stage_name.to_owned(),
        stage,
        layers,
        trees,
        caches,
        binhost: settings.binhost.then(|| settings.binpkgs.clone()),
        conf,
        network: settings.network,
        limits: settings.limits,
        tmpfs: settings.tmpfs.clone(),
        mount: settings.mount.clone(),
    })
}

/// The trees a run serves: `(name, ref, location in the chroot)`, the main
/// tree first, then each `--repo-ref NAME=REF`.
fn wanted_trees(tag: &str, settings: &Settings) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let mut wanted = vec![(
        "gentoo".to_owned(),
        tag.to_owned(),
        settings.layout.main_location(),
    )];
    for spec in &settings.repo_refs {
        let Some((name, reference)) = spec.split_once('=') else {
            bail!("--repo-ref {spec}: expected NAME=REF");
        };
        if name == "gentoo" || !crate::store::is_valid_name(name) || reference.is_empty() {
            bail!("--repo-ref {spec}: expected NAME=REF with a repository name other than gentoo");
        }
        if wanted.iter().any(|(n, _, _)| n == name) {
            bail!("--repo-ref {spec}: repository {name} given twice");
        }
        wanted.push((
            name.to_owned(),
            reference.to_owned(),
            conf::repo_location(name),
        ));
    }
    Ok(wanted)
}

/// The commit `reference` names in the repository (a tag first, then any
/// revision git understands), or one line saying what is missing.
fn resolve_ref(git_dir: &Path, name: &str, reference: &str) -> anyhow::Result<String> {
    let repo = git2::Repository::open_bare(git_dir).map_err(|_| {
        anyhow::anyhow!("no repository {name} in the store ({})", git_dir.display())
    })?;
    let found = portroot_fs::store::lookup(&repo, reference).and_then(|o| {
        o.peel_to_commit()
            .map(|c| c.id())
            .or_else(|_| o.peel_to_tree().map(|t| t.id()))
    });
    match found {
        Ok(id) => Ok(id.to_string()),
        Err(_) => bail!("no tag or ref {reference} in repository {name}"),
    }
}

/// Lease the stage the chroots are layered over for as long as the value
/// lives, so `stage rm` cannot pull it from under the overlays.
pub(super) fn lease_stage(store: &Store, name_or_digest: &str) -> anyhow::Result<StageLease> {
    Ok(StageStore::new(store.stages_dir(), store.tmp_dir()).lease(name_or_digest)?)
}

/// Lease the layers (bottom first) over the stage `digest`, checking that
/// they were built over it in this order.
pub(super) fn lease_layers(
    store: &Store,
    digest: &str,
    names: &[String],
) -> anyhow::Result<LayerLease> {
    Ok(LayerStore::new(store.layers_dir(), store.tmp_dir()).lease(digest, names)?)
}
