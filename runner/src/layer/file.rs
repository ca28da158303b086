//! A layer as one file, so another store (a Slurm node) can add it by its
//! digest: `layer.json` first, byte for byte, then the upper directory as
//! `upper/`, whiteouts (0/0 character devices) and opaque directories
//! (`trusted.overlay.opaque`) kept as overlayfs reads them; a PAX tar,
//! xz-compressed, entries sorted, so two exports of one layer are equal.
//!
//! Adding unpacks into a locked scratch directory in `tmp/`, checks that it
//! holds exactly a `layer.json` and an `upper/`, that the name is free (or
//! holds this very layer: same creation id, nothing to do) and that every
//! parent is in the store with the id recorded, then renames it into
//! `layers/NAME`. Anything else leaves nothing. The digest of the file is
//! the caller's to check before (`portroot layer add --sha256`).

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use super::{Layer, LayerRecord, LayerStore};
use crate::error::{io, sys, Error, Result};
use crate::stage::export::{export_with, ExportStats, Layout};

/// Where a layer's export digest is kept once known (written by an export
/// or an add): what a Slurm submitter pins the layer's file by.
pub const EXPORT_DIGEST: &str = "export.sha256";

/// Write `layer` as a tarball at `out` (atomically); its sha256 is
/// recorded in the layer's directory and returned with the stats.
pub fn export(layer: &Layer, out: &Path) -> Result<(ExportStats, String)> {
    let json_path = layer.dir.join("layer.json");
    let json = fs::read(&json_path).map_err(io("reading", &json_path))?;
    let layout = Layout {
        head: Some(("layer.json", &json, layer.record.created)),
        prefix: "upper",
        keep_opaque: true,
    };
    let stats = export_with(&layer.upper(), out, &layout, &|_| Ok(()), &|_, _| {})?;
    let digest = sha256_file(out)?;
    record_digest(&layer.dir, &digest)?;
    Ok((stats, digest))
}

/// The export digest recorded for the layer in `dir`, if any.
pub fn recorded_digest(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(EXPORT_DIGEST)).ok()?;
    let d = text.trim();
    (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_owned())
}

fn record_digest(dir: &Path, digest: &str) -> Result<()> {
    let tmp = dir.join(format!(".{EXPORT_DIGEST}.new"));
    fs::write(&tmp, format!("{digest}\n")).map_err(io("writing", &tmp))?;
    let path = dir.join(EXPORT_DIGEST);
    fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
}

/// Hex sha256 of a file.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(io("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What [`LayerStore::add_export`] did.
#[derive(Debug)]
pub struct AddedLayer {
    /// The layer, in the store.
    pub layer: Layer,
    /// False if the store held this very layer (same id) already.
    pub unpacked: bool,
}

impl LayerStore {
    /// Add the layer exported to `tarball` (whose digest the caller checked:
    /// `digest` is recorded with it). Refused, leaving nothing, if the file
    /// is not a layer export, the name is taken by another layer, or a
    /// parent is missing or has another id.
    pub fn add_export(&self, tarball: &Path, digest: &str) -> Result<AddedLayer> {
        fs::create_dir_all(&self.tmp).map_err(io("creating", &self.tmp))?;
        let staging = tempfile::Builder::new()
            .prefix("layer-new-add-")
            .tempdir_in(&self.tmp)
            .map_err(io("creating a directory in", &self.tmp))?;
        let busy_file = File::open(staging.path()).map_err(io("opening", staging.path()))?;
        let _busy = Flock::lock(busy_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| sys("locking", staging.path())(e))?;
        let (stream, _) =
            crate::archive::open_decompressed(tarball).map_err(io("opening", tarball))?;
        crate::stage::unpack::unpack(stream, tarball, staging.path(), &mut || {})?;
        let record = read_export(staging.path(), tarball)?;
        if let Some(have) = self.present(&record)? {
            return Ok(AddedLayer {
                layer: have,
                unpacked: false,
            });
        }
        self.check_parents(&record)?;
        let pending = self.begin(&record.name)?;
        File::create(staging.path().join("lock"))
            .map_err(io("creating", staging.path().join("lock")))?;
        record_digest(staging.path(), digest)?;
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
            .map_err(io("changing mode of", staging.path()))?;
        let dest = self.layers.join(&record.name);
        super::move_into_place(staging, &dest)?;
        drop(pending);
        info!(layer = %record.name, id = %record.id, "layer added");
        Ok(AddedLayer {
            layer: Layer { dir: dest, record },
            unpacked: true,
        })
    }

    /// The layer of this name if it is this very one; an error if the name
    /// is another layer's.
    fn present(&self, record: &LayerRecord) -> Result<Option<Layer>> {
        match self.get(&record.name) {
            Ok(have) if have.record.id == record.id => Ok(Some(have)),
            Ok(have) => Err(Error::Invalid(format!(
                "layer {} already exists with id {} (the file holds id {}); nothing added",
                record.name, have.record.id, record.id
            ))),
            Err(Error::UnknownLayer(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every parent of `record` is in the store with the recorded id.
    fn check_parents(&self, record: &LayerRecord) -> Result<()> {
        for p in &record.parents {
            match self.get(&p.name) {
                Ok(have) if have.record.id == p.id => {}
                Ok(have) => {
                    return Err(Error::Invalid(format!(
                    "layer {} was built over layer {} id {}, this store's has id {}; nothing added",
                    record.name, p.name, p.id, have.record.id
                )))
                }
                Err(Error::UnknownLayer(_)) => {
                    return Err(Error::Invalid(format!(
                        "layer {} needs its parent layer {} (id {}): add it first; nothing added",
                        record.name, p.name, p.id
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The record of an unpacked export in `dir`, which must hold exactly
/// `layer.json` and the directory `upper`.
fn read_export(dir: &Path, tarball: &Path) -> Result<LayerRecord> {
    let not_layer = |why: &str| {
        Error::Invalid(format!(
            "{} is not a layer export ({why}); nothing added",
            tarball.display()
        ))
    };
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .map_err(io("reading", dir))?;
    names.sort();
    if names != ["layer.json", "upper"] {
        return Err(not_layer("expected layer.json and upper/ only"));
    }
    let upper = dir.join("upper");
    if !fs::symlink_metadata(&upper).is_ok_and(|m| m.is_dir()) {
        return Err(not_layer("upper is not a directory"));
    }
    let json_path = dir.join("layer.json");
    let md = fs::symlink_metadata(&json_path).map_err(io("reading", &json_path))?;
    if !md.is_file() {
        return Err(not_layer("layer.json is not a file"));
    }
    let text = fs::read(&json_path).map_err(io("reading", &json_path))?;
    let record: LayerRecord =
        serde_json::from_slice(&text).map_err(|_| not_layer("layer.json does not parse"))?;
    if !crate::name::is_valid_name(&record.name)
        || record
            .parents
            .iter()
            .any(|p| !crate::name::is_valid_name(&p.name))
    {
        return Err(not_layer("a layer name in layer.json is invalid"));
    }
    Ok(record)
}
