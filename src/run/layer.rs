//! `layer create`'s part of a run: once its one job succeeded, its upper
//! directory becomes a named layer, with the provenance the run pinned.

use std::path::PathBuf;

use portroot_runner::layer::{Layer, LayerStore, PendingLayer, Provenance, RunnerWrites, TreeRef};

use super::execute::Finished;

/// Keep the one job of the finished run `done` as the layer `pending`
/// reserved, if the job exited 0 and nothing interrupted the run; `script`
/// is the job's command, for the record. `None` if there was nothing to
/// keep, or a signal came while keeping it (the run reports the signal).
pub fn keep_job(
    layers: &LayerStore,
    pending: PendingLayer,
    done: &Finished<'_>,
    script: &str,
) -> anyhow::Result<Option<Layer>> {
    let Some(outcome) = done.outcomes.first() else {
        return Ok(None);
    };
    if (done.interrupted)() || !outcome.status.success() {
        return Ok(None);
    }
    let record = done.record;
    let parents = record
        .layer_names
        .iter()
        .map(|n| Ok(layers.get(n)?.record.as_ref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trees = record
        .trees
        .iter()
        .map(|t| TreeRef {
            name: t.name.clone(),
            reference: t.reference.clone(),
            commit: t.commit.clone().unwrap_or_default(),
        })
        .collect();
    let mut mount_targets: Vec<PathBuf> = record
        .trees
        .iter()
        .map(|t| t.target.clone())
        .chain(record.caches.iter().map(|c| c.target.clone()))
        .collect();
    mount_targets.extend(["/proc", "/dev", "/sys"].map(PathBuf::from));
    let writes = RunnerWrites {
        conf: record.conf.clone(),
        // What the sandbox wrote: the host's, read the same way.
        resolv_conf: record
            .conf
            .resolv_conf
            .clone()
            .or_else(|| std::fs::read("/etc/resolv.conf").ok()),
        mount_targets,
    };
    let prov = Provenance {
        stage: record.stage.clone(),
        stage_digest: record.stage_digest.clone(),
        parents,
        trees,
        command: script.to_owned(),
        exit_status: 0,
    };
    let upper = done.run_dir.job(&outcome.name).upper();
    match pending.commit(&upper, &record.layers, &writes, prov, done.interrupted) {
        Ok(layer) => Ok(Some(layer)),
        Err(_) if (done.interrupted)() => Ok(None),
        Err(e) => Err(e.into()),
    }
}
