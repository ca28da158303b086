//! Named layers: a successful job's overlay upper directory, kept read-only so
//! later chroots stack over the stage without copying a whole root.
//!
//! ```text
//! layers/<name>/upper/       the job's upper directory, moved (not copied) here;
//!                            whiteouts (0/0 char devices) and opaque directories
//!                            (`trusted.overlay.opaque=y`) kept as overlayfs wrote them
//! layers/<name>/layer.json   what it was built from (stage digest, parents with
//!                            their ids, trees and commits), the command, when, size
//! layers/<name>/lock         shared flock while a run uses the layer, exclusive for rm
//! layers/.<name>.create      flock'ed while `layer create NAME` runs
//! tmp/layer-new-*            a layer being committed (flock'ed while live)
//! tmp/layer-rm-*             a layer being deleted
//! tmp/export-*               `stage export`'s mount point for the merged view
//! ```
//!
//! A layer is only usable over exactly the stage and parent layers it was
//! built over ([`check_chain`]): its upper directory records differences, which
//! mean nothing over another base. Every parent is recorded with its `id`, so
//! removing a parent and creating another of the same name is detected.
//!
//! A used layer is an overlayfs lower directory: the kernel applies its
//! whiteouts and opaque directories natively and never writes to it.

pub mod file;
mod upper;
mod view;

use crate::digest::StageDigest;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use self::upper::{count, strip_runner_writes};
pub use self::upper::{is_whiteout, RunnerWrites};
pub use self::view::LowerView;
use crate::error::{io, sys, Error, Result};
use crate::name::{is_valid_name, NAME_RULE};

/// A parent layer as a child records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// The layer's name.
    pub name: String,
    /// The layer's id: unique per creation, so a re-created name differs.
    pub id: String,
}

/// A tree the creating job saw, resolved to its commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    /// Repository name (`gentoo` for the main tree).
    pub name: String,
    /// The tag or ref given.
    pub reference: String,
    /// The commit it resolved to (hex).
    pub commit: String,
}

/// `layer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer's name (its directory).
    pub name: String,
    /// Unique per creation (`YYYYMMDD-HHMMSS-xxxx`).
    pub id: String,
    /// Digest of the stage it was built over.
    pub stage_digest: StageDigest,
    /// The stage as the user named it then.
    pub stage: String,
    /// The layers it was built over, bottom first.
    pub parents: Vec<LayerRef>,
    /// The portage trees the job saw.
    pub trees: Vec<TreeRef>,
    /// The job's script.
    pub command: String,
    /// The job's exit status (always 0: failed jobs make no layer).
    pub exit_status: i32,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Entries in the upper directory (whiteouts included).
    pub files: u64,
    /// Bytes of regular file data in the upper directory.
    pub bytes: u64,
}

impl LayerRecord {
    /// This layer as a child refers to it.
    pub fn as_ref(&self) -> LayerRef {
        LayerRef {
            name: self.name.clone(),
            id: self.id.clone(),
        }
    }
}

/// One layer of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `layers/<name>`.
    pub dir: PathBuf,
    /// Its `layer.json`.
    pub record: LayerRecord,
}

impl Layer {
    /// The directory used as an overlay lower layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
}

/// Layers held for a run: while this lives, none of them can be removed.
#[derive(Debug)]
pub struct LayerLease {
    /// The layers, bottom first, as named on the command line.
    pub layers: Vec<Layer>,
    _locks: Vec<Flock<File>>,
}

impl LayerLease {
    /// The lower directories of these layers, top first (for `lowerdir=`,
    /// before the stage rootfs).
    pub fn lowers_top_first(&self) -> Vec<PathBuf> {
        self.layers.iter().rev().map(Layer::upper).collect()
    }

    /// The parent references a layer built over this stack records.
    pub fn refs(&self) -> Vec<LayerRef> {
        self.layers.iter().map(|l| l.record.as_ref()).collect()
    }
}

/// Check that `layers` (bottom first) may be stacked over the stage `stage_digest`:
/// each one was built over that stage and over exactly the layers before it.
pub fn check_chain(stage_digest: &str, layers: &[Layer]) -> Result<()> {
    for (i, layer) in layers.iter().enumerate() {
        let r = &layer.record;
        if layers[..i].iter().any(|l| l.record.name == r.name) {
            return Err(Error::Invalid(format!("layer {} is given twice", r.name)));
        }
        if r.stage_digest != stage_digest {
            return Err(Error::LayerChain {
                layer: r.name.clone(),
                why: format!(
                    "it was built over stage {} but is used over stage {}",
                    short(&r.stage_digest),
                    short(stage_digest)
                ),
            });
        }
        let below: Vec<LayerRef> = layers[..i].iter().map(|l| l.record.as_ref()).collect();
        if r.parents != below {
            let names = |refs: &[LayerRef]| {
                if refs.is_empty() {
                    "the stage alone".to_owned()
                } else {
                    refs.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let why = if r
                .parents
                .iter()
                .map(|p| &p.name)
                .eq(below.iter().map(|p| &p.name))
            {
                format!(
                    "its parents {} were removed and created again since it was built",
                    names(&r.parents)
                )
            } else {
                format!(
                    "it was built over {} but is used over {} (give --layer in build order, bottom first)",
                    names(&r.parents),
                    names(&below)
                )
            };
            return Err(Error::LayerChain {
                layer: r.name.clone(),
                why,
            });
        }
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The layers of one store.
#[derive(Debug, Clone)]
pub struct LayerStore {
    layers: PathBuf,
    tmp: PathBuf,
}

impl LayerStore {
    /// The layers in `layers_dir` (`store.layers_dir()`), with scratch space in
    /// `tmp_dir` (same filesystem). Nothing is created until a layer is.
    pub fn new(layers_dir: PathBuf, tmp_dir: PathBuf) -> LayerStore {
        LayerStore {
            layers: layers_dir,
            tmp: tmp_dir,
        }
    }

    /// The layer called `name`.
    pub fn get(&self, name: &str) -> Result<Layer> {
        if !is_valid_name(name) {
            return Err(Error::UnknownLayer(name.to_owned()));
        }
        let dir = self.layers.join(name);
        let path = dir.join("layer.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::UnknownLayer(name.to_owned()))
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let record = serde_json::from_slice(&text).map_err(|source| Error::Json {
            what: "parsing",
            path: path.clone(),
            source,
        })?;
        Ok(Layer { dir, record })
    }

    /// Every layer, oldest first.
    pub fn list(&self) -> Result<Vec<Layer>> {
        let rd = match fs::read_dir(&self.layers) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &self.layers)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io("reading", &self.layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_valid_name(&name) || !entry.path().join("layer.json").is_file() {
                continue;
            }
            out.push(self.get(&name)?);
        }
        out.sort_by(|a, b| {
            (a.record.created, &a.record.name).cmp(&(b.record.created, &b.record.name))
        });
        Ok(out)
    }

    /// Hold `names` (bottom first) for a run over the stage `stage_digest`,
    /// after checking the chain. Fails at once if one is being removed.
    pub fn lease(&self, stage_digest: &str, names: &[String]) -> Result<LayerLease> {
        let mut layers = Vec::new();
        let mut locks = Vec::new();
        for name in names {
            let layer = self.get(name)?;
            let path = layer.dir.join("lock");
            let file = File::open(&path).map_err(io("opening", &path))?;
            let lock = Flock::lock(file, FlockArg::LockSharedNonblock).map_err(|(_, errno)| {
                if errno == Errno::EWOULDBLOCK {
                    Error::LayerBusy {
                        layer: name.clone(),
                        why: "it is being removed".into(),
                    }
                } else {
                    sys("locking", &path)(errno)
                }
            })?;
            // A removal that finished between reading and locking moved it away.
            if !layer.upper().is_dir() {
                return Err(Error::UnknownLayer(name.clone()));
            }
            layers.push(layer);
            locks.push(lock);
        }
        check_chain(stage_digest, &layers)?;
        debug!(layers = ?names, "layers leased");
        Ok(LayerLease {
            layers,
            _locks: locks,
        })
    }

    /// Start creating layer `name`: refused if it exists or another create of
    /// the same name runs. The returned value holds the name until committed or
    /// dropped (then nothing is left).
    pub fn begin(&self, name: &str) -> Result<PendingLayer> {
        if !is_valid_name(name) {
            return Err(Error::Invalid(format!(
                "invalid layer name {name:?}: a name is {NAME_RULE}"
            )));
        }
        let exists = || Error::Invalid(format!("layer {name} already exists"));
        if self.layers.join(name).exists() {
            return Err(exists());
        }
        fs::create_dir_all(&self.layers).map_err(io("creating", &self.layers))?;
        let lock_path = self.layers.join(format!(".{name}.create"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("creating", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                Error::LayerBusy {
                    layer: name.to_owned(),
                    why: "another `layer create` of this name is running".into(),
                }
            } else {
                sys("locking", &lock_path)(errno)
            }
        })?;
        // The lock file is removed when a create ends: if ours was removed
        // between open and lock, another create holds a newer one.
        let locked = nix::sys::stat::fstat(&*lock).map_err(sys("reading", &lock_path))?;
        let current = fs::metadata(&lock_path).ok();
        if current.is_none_or(|m| m.ino() != locked.st_ino) {
            return Err(Error::LayerBusy {
                layer: name.to_owned(),
                why: "another `layer create` of this name is running".into(),
            });
        }
        // Checked again under the lock: a create that just finished.
        if self.layers.join(name).exists() {
            let _ = fs::remove_file(&lock_path);
            return Err(exists());
        }
        Ok(PendingLayer {
            store: self.clone(),
            name: name.to_owned(),
            lock_path,
            _lock: lock,
        })
    }

    /// Remove layer `name`. Refused while another layer is built over it, while
    /// a run uses it (its lock) or keeps a chroot over it (`runs_dir`).
    pub fn remove(&self, name: &str, runs_dir: &Path) -> Result<()> {
        let layer = self.get(name)?;
        let me = layer.record.as_ref();
        let children: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|l| l.record.parents.contains(&me))
            .map(|l| l.record.name)
            .collect();
        if !children.is_empty() {
            return Err(Error::LayerBusy {
                layer: name.to_owned(),
                why: format!("layer {} is built over it", children.join(", ")),
            });
        }
        let upper = layer.upper();
        if let Some(run) = crate::run::runs_using(runs_dir, &upper)?.first() {
            return Err(Error::LayerBusy {
                layer: name.to_owned(),
                why: format!("run {run} uses it (`portroot gc --all` removes finished runs)"),
            });
        }
        let lock_path = layer.dir.join("lock");
        let file = File::open(&lock_path).map_err(io("opening", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                Error::LayerBusy {
                    layer: name.to_owned(),
                    why: "a run uses it".into(),
                }
            } else {
                sys("locking", &lock_path)(errno)
            }
        })?;
        fs::create_dir_all(&self.tmp).map_err(io("creating", &self.tmp))?;
        let doomed = tempfile::Builder::new()
            .prefix(&format!("layer-rm-{name}-"))
            .tempdir_in(&self.tmp)
            .map_err(io("creating a directory in", &self.tmp))?;
        let target = doomed.path().join(name);
        fs::rename(&layer.dir, &target).map_err(io("moving away", &layer.dir))?;
        drop(lock);
        // The TempDir deletes the moved layer; report a failure rather than
        // ignore it.
        let path = doomed.path().to_owned();
        doomed.close().map_err(io("removing", path))?;
        info!(layer = name, id = %layer.record.id, "layer removed");
        Ok(())
    }

    /// Remove what interrupted creates, removals and `stage export`s left in
    /// `tmp/` (those not locked by a live process). Returns how many went.
    pub fn collect_garbage(&self) -> Result<usize> {
        let rd = match fs::read_dir(&self.tmp) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("reading", &self.tmp)(e)),
        };
        let mut removed = 0;
        for entry in rd {
            let entry = entry.map_err(io("reading", &self.tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let ours = ["layer-new-", "layer-rm-", "export-"];
            if !ours.iter().any(|p| name.starts_with(p)) || !path.is_dir() {
                continue;
            }
            let dir = File::open(&path).map_err(io("opening", &path))?;
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(_lock) => {
                    fs::remove_dir_all(&path).map_err(io("removing", &path))?;
                    info!(dir = %path.display(), "removed what an interrupted layer create or rm left");
                    removed += 1;
                }
                Err((_, Errno::EWOULDBLOCK)) => debug!(dir = %path.display(), "in use; left alone"),
                Err((_, e)) => return Err(sys("locking", &path)(e)),
            }
        }
        Ok(removed)
    }
}

/// A layer name held by a running `layer create`.
#[derive(Debug)]
pub struct PendingLayer {
    store: LayerStore,
    name: String,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for PendingLayer {
    fn drop(&mut self) {
        // Still locked here (fields drop after this): see `begin`.
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// What [`PendingLayer::commit`] records besides the upper directory itself.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The stage as named.
    pub stage: String,
    /// Its digest.
    pub stage_digest: StageDigest,
    /// Parents, bottom first.
    pub parents: Vec<LayerRef>,
    /// Trees and commits.
    pub trees: Vec<TreeRef>,
    /// The job's script.
    pub command: String,
    /// The job's exit status.
    pub exit_status: i32,
}

impl PendingLayer {
    /// The name being created.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Move `upper` (a finished job's upper directory, on the store's
    /// filesystem) into the store as this layer. `lowers` are the job's lower
    /// directories, top first; with more than one, they are mounted read-only
    /// on a scratch directory to see what the runner's files looked like
    /// before the job, so the caller must be in a private mount namespace.
    ///
    /// The runner's own writes (portage configuration, resolv.conf, empty
    /// mount points) are taken out of the upper directory where the job left
    /// them as written: they are written again by every run, and appending
    /// `make.conf` lines per layer would pile them up. The job's own changes
    /// to those files are kept.
    ///
    /// `cancelled` is asked last, before the layer is renamed into place: an
    /// interrupt up to then leaves no layer.
    pub fn commit(
        self,
        upper: &Path,
        lowers: &[PathBuf],
        writes: &RunnerWrites,
        prov: Provenance,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Layer> {
        let tmp = &self.store.tmp;
        fs::create_dir_all(tmp).map_err(io("creating", tmp))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!("layer-new-{}-", self.name))
            .tempdir_in(tmp)
            .map_err(io("creating a directory in", tmp))?;
        let busy_file = File::open(staging.path()).map_err(io("opening", staging.path()))?;
        let _busy = Flock::lock(busy_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| sys("locking", staging.path())(e))?;
        let new_upper = staging.path().join("upper");
        fs::rename(upper, &new_upper).map_err(io("moving into the layer", upper))?;
        {
            let view_dir = staging.path().join("view");
            let view = LowerView::mount(lowers, &view_dir)?;
            strip_runner_writes(&new_upper, view.path(), writes)?;
        }
        let (files, bytes) = count(&new_upper)?;
        let now = SystemTime::now();
        let record = LayerRecord {
            name: self.name.clone(),
            id: crate::run::new_run_id(now),
            stage_digest: prov.stage_digest,
            stage: prov.stage,
            parents: prov.parents,
            trees: prov.trees,
            command: prov.command,
            exit_status: prov.exit_status,
            created: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            files,
            bytes,
        };
        let json_path = staging.path().join("layer.json");
        let json = serde_json::to_vec_pretty(&record).map_err(|source| Error::Json {
            what: "encoding",
            path: json_path.clone(),
            source,
        })?;
        fs::write(&json_path, json).map_err(io("writing", &json_path))?;
        let lock = staging.path().join("lock");
        File::create(&lock).map_err(io("creating", &lock))?;
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
            .map_err(io("changing mode of", staging.path()))?;
        let dest = self.store.layers.join(&self.name);
        if cancelled() {
            return Err(Error::Invalid(format!(
                "interrupted: layer {} not created",
                self.name
            )));
        }
        move_into_place(staging, &dest)?;
        info!(layer = %self.name, files, bytes, "layer created");
        Ok(Layer { dir: dest, record })
    }
}

/// Rename the finished `staging` directory to `dest`, never over an
/// existing layer, and keep it from being removed.
fn move_into_place(staging: tempfile::TempDir, dest: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        staging.path(),
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(sys("moving the layer into place at", dest))?;
    let _ = staging.keep();
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    fn layer(name: &str, id: &str, stage: &str, parents: &[(&str, &str)]) -> Layer {
        Layer {
            dir: PathBuf::from("/l").join(name),
            record: LayerRecord {
                name: name.into(),
                id: id.into(),
                stage_digest: StageDigest::parse(stage).expect("a digest"),
                stage: "s".into(),
                parents: parents
                    .iter()
                    .map(|(n, i)| LayerRef {
                        name: (*n).into(),
                        id: (*i).into(),
                    })
                    .collect(),
                trees: vec![],
                command: "true".into(),
                exit_status: 0,
                created: 0,
                files: 0,
                bytes: 0,
            },
        }
    }

    #[test]
    fn chain_accepts_build_order_and_refuses_the_rest() {
        let s = "a".repeat(64);
        let base = layer("base", "1", &s, &[]);
        let top = layer("top", "2", &s, &[("base", "1")]);
        check_chain(&s, &[base.clone(), top.clone()]).unwrap();
        check_chain(&s, std::slice::from_ref(&base)).unwrap();
        check_chain(&s, &[]).unwrap();

        let err = check_chain(&s, &[top.clone(), base.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("layer top cannot be used here: it was built over base but is used over the stage alone"), "{err}");
        let err = check_chain(&s, std::slice::from_ref(&top))
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer top"), "{err}");
        let other = "b".repeat(64);
        let err = check_chain(&other, std::slice::from_ref(&base))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("built over stage aaaaaaaaaaaa but is used over stage bbbbbbbbbbbb"),
            "{err}"
        );
        // Same name, new id: the parent was removed and created again.
        let base2 = layer("base", "3", &s, &[]);
        let err = check_chain(&s, &[base2, top.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("removed and created again"), "{err}");
        let err = check_chain(&s, &[base.clone(), base])
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn begin_refuses_existing_and_concurrent_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::new(dir.path().join("layers"), dir.path().join("tmp"));
        let pending = store.begin("web").unwrap();
        let err = store.begin("web").unwrap_err().to_string();
        assert!(err.contains("another `layer create`"), "{err}");
        drop(pending);
        fs::create_dir_all(dir.path().join("layers/web")).unwrap();
        let err = store.begin("web").unwrap_err().to_string();
        assert_eq!(err, "layer web already exists");
        assert!(store.begin("../x").is_err());
        assert!(matches!(store.get("nope"), Err(Error::UnknownLayer(_))));
    }
}
