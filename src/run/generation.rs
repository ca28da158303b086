//! A run's binhost generation (`run --binhost`): made from `current` before
//! the first job, bound as every job's PKGDIR, counted and compared with its
//! parent when the run ends, and published only if every job succeeded.

use std::path::Path;

use anyhow::Context;
use portroot_runner::binhost::{self, Binhost};
use portroot_runner::conf;
use portroot_runner::run::{RunGeneration, RunRecord};

/// Make the run's generation (named after it) in the binhost `root` and
/// point the record's PKGDIR at it.
pub(super) fn create(root: &Path, record: &mut RunRecord) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let host = Binhost::new(root);
    let meta = host.create(&record.id, Some(&record.id))?;
    let path = host.path(&meta.id);
    for bind in &mut record.caches {
        if bind.target == Path::new(conf::PKGDIR) {
            bind.source = path.clone();
        }
    }
    tracing::info!(generation = %meta.id, parent = ?meta.parent, "binhost generation made");
    record.binhost = Some(RunGeneration {
        root: root.to_owned(),
        generation: meta.id,
        parent: meta.parent,
        built: None,
        packages: None,
    });
    Ok(())
}

/// When the run ended: record what its generation serves and what changed
/// against its parent; publish it if `publish` and the run ended `ok`.
/// Returns whether it was published.
pub(super) fn settle(record: &mut RunRecord, publish: bool) -> anyhow::Result<bool> {
    let ok = record.ended() == Some("ok");
    let Some(gen) = &mut record.binhost else {
        return Ok(false);
    };
    let host = Binhost::new(&gen.root);
    let now = binhost::packages(&host.path(&gen.generation))?;
    let before = match &gen.parent {
        Some(p) => binhost::packages(&host.path(p))?,
        // The first generation of a binhost made before generations was
        // linked from what its top held: compare with that index.
        None => match std::fs::read_to_string(gen.root.join("Packages")) {
            Ok(text) => binhost::parse_index(&text),
            Err(_) => Vec::new(),
        },
    };
    gen.built = Some(binhost::diff(&before, &now));
    gen.packages = Some(now.len());
    let mut meta = host.meta(&gen.generation)?;
    meta.packages = Some(now.len());
    host.save_meta(&meta)?;
    if !(publish && ok) {
        return Ok(false);
    }
    host.publish(&gen.generation)?;
    tracing::info!(generation = %gen.generation, packages = now.len(), "published");
    Ok(true)
}
