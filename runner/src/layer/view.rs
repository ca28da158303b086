//! The merged read-only view of a stage and its layers.

use std::fs::{self};
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::error::{io, sys, Error, Result};

/// The merged read-only view of lower directories (top first): an overlay
/// with no upper directory when there are several (overlayfs needs two), the
/// directory itself when there is one. Unmounted on drop.
#[derive(Debug)]
pub struct LowerView {
    path: PathBuf,
    mounted: bool,
}

impl LowerView {
    /// Mount `lowers` (top first) read-only on `mountpoint` (created), or use
    /// the only one directly. Call in a private mount namespace.
    pub fn mount(lowers: &[PathBuf], mountpoint: &Path) -> Result<LowerView> {
        match lowers {
            [] => Err(Error::Invalid("no layers to view".into())),
            [one] => Ok(LowerView {
                path: one.clone(),
                mounted: false,
            }),
            many => {
                fs::create_dir_all(mountpoint).map_err(io("creating", mountpoint))?;
                let opts = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                    crate::plan::lowerdir_option(many),
                );
                nix::mount::mount(
                    Some("overlay"),
                    mountpoint,
                    Some("overlay"),
                    nix::mount::MsFlags::MS_RDONLY,
                    Some(opts.as_os_str()),
                )
                .map_err(sys("mounting the layers read-only on", mountpoint))?;
                debug!(mountpoint = %mountpoint.display(), layers = many.len(), "lower view mounted");
                Ok(LowerView {
                    path: mountpoint.to_owned(),
                    mounted: true,
                })
            }
        }
    }

    /// Where the merged view is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LowerView {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %self.path.display(), error = %e, "unmounting the lower view");
            }
            let _ = fs::remove_dir(&self.path);
        }
    }
}
