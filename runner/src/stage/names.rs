//! Stage names: the store's name rule, not a digest, and the name a
//! tarball gets from its file name.

use std::path::Path;

use crate::error::{Error, Result};
use crate::name::{is_valid_name, NAME_RULE};

pub(super) use crate::digest::is_digest;

pub(super) fn check_name(name: &str) -> Result<()> {
    if is_valid_name(name) && !is_digest(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid stage name {name:?}: a name is {NAME_RULE}, and not a digest"
        )))
    }
}

/// The name a tarball gets when none is given: its file name without the
/// archive suffix (`stage4-amd64-2026.tar.xz` → `stage4-amd64-2026`).
pub fn default_name(tarball: &Path) -> Option<String> {
    const SUFFIXES: &[&str] = &[
        ".tar.xz",
        ".tar.bz2",
        ".tar.gz",
        ".tar.zst",
        ".tar.zstd",
        ".tbz2",
        ".tbz",
        ".tgz",
        ".txz",
        ".tzst",
        ".tar",
    ];
    let file = tarball.file_name()?.to_str()?;
    let stem = SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    (is_valid_name(stem) && !is_digest(stem)).then(|| stem.to_owned())
}

pub(super) fn default_name_for(tarball: &Path) -> Result<String> {
    default_name(tarball).ok_or_else(|| {
        Error::Invalid(format!(
            "cannot derive a stage name from {}: give one with --name",
            tarball.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_drop_the_archive_suffix() {
        let n = |s: &str| default_name(Path::new(s));
        assert_eq!(
            n("/x/stage4-amd64-2026.tar.xz").as_deref(),
            Some("stage4-amd64-2026")
        );
        assert_eq!(n("stage3.tbz2").as_deref(), Some("stage3"));
        assert_eq!(n("s.tar.zst").as_deref(), Some("s"));
        assert_eq!(n("plain.tar").as_deref(), Some("plain"));
        assert_eq!(n("no suffix here"), None);
        assert_eq!(n(".hidden.tar"), None);
    }
}
