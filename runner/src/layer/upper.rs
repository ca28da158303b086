//! A job's upper directory on its way to becoming a layer: what the runner
//! wrote into it taken out again, empty directories pruned, entries counted.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::conf::ChrootConf;
use crate::error::{io, Result};

/// What the runner itself wrote into a job's upper directory, to take out
/// again before the upper directory becomes a layer (see [`PendingLayer::commit`](super::PendingLayer::commit)).
#[derive(Debug, Clone)]
pub struct RunnerWrites {
    /// The configuration written into the chroot.
    pub conf: ChrootConf,
    /// What the sandbox wrote as `/etc/resolv.conf`.
    pub resolv_conf: Option<Vec<u8>>,
    /// Mount targets inside the chroot (created empty if the stage lacks them).
    pub mount_targets: Vec<PathBuf>,
}

/// Take the runner's own writes out of `upper` where they are still exactly
/// as the runner left them; `lower` is the view the job started from.
pub(super) fn strip_runner_writes(upper: &Path, lower: &Path, w: &RunnerWrites) -> Result<()> {
    let portage = Path::new("etc/portage");
    let make_conf = if plain_path(lower, &portage.join("make.conf"))
        && fs::symlink_metadata(lower.join(portage).join("make.conf")).is_ok_and(|m| m.is_dir())
    {
        portage.join("make.conf/zz-portroot.conf")
    } else {
        portage.join("make.conf")
    };
    let mut appended = vec![(make_conf, w.conf.make_conf().into_bytes())];
    if let Some(m) = w.conf.mirrors() {
        appended.push((portage.join("mirrors"), m.into_bytes()));
    }
    for (rel, ours) in appended {
        let before = if plain_path(lower, &rel) {
            read_regular(&lower.join(&rel))?.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut want = before;
        want.extend_from_slice(&ours);
        unwrite(upper, &rel, &want, Some(&ours))?;
    }
    let gentoo_conf = portage.join("repos.conf/gentoo.conf");
    unwrite(upper, &gentoo_conf, w.conf.repos_conf().as_bytes(), None)?;
    if let Some(resolv) = &w.resolv_conf {
        unwrite(upper, Path::new("etc/resolv.conf"), resolv, None)?;
    }
    // Directories the runner made or copied up, innermost first.
    let mut dirs: Vec<PathBuf> = vec![portage.join("repos.conf"), portage.to_owned(), "etc".into()];
    for t in &w.mount_targets {
        let rel = t.strip_prefix("/").unwrap_or(t);
        dirs.extend(
            rel.ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_owned),
        );
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for rel in dirs {
        prune_dir(upper, lower, &rel)?;
    }
    Ok(())
}

/// If `upper/rel` is a regular file holding exactly `want` (what the runner
/// made of the lower file), drop it so the lower file shows again. If it only
/// ends with `appended`, the job edited it too: keep its edits, cut ours.
pub(super) fn unwrite(
    upper: &Path,
    rel: &Path,
    want: &[u8],
    appended: Option<&[u8]>,
) -> Result<()> {
    if !plain_path(upper, rel) {
        return Ok(());
    }
    let path = upper.join(rel);
    let Some(have) = read_regular(&path)? else {
        return Ok(());
    };
    if have == want {
        // The lower file (or symlink, for resolv.conf) shows again.
        fs::remove_file(&path).map_err(io("removing", &path))?;
        debug!(file = %rel.display(), "dropped the runner's copy");
    } else if let Some(ours) = appended.filter(|o| !o.is_empty() && have.ends_with(o)) {
        let keep = have.len() - ours.len();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        f.set_len(keep as u64).map_err(io("truncating", &path))?;
        debug!(file = %rel.display(), "cut the runner's lines, kept the job's edits");
    } else {
        debug!(file = %rel.display(), "changed by the job; kept");
    }
    Ok(())
}

/// Remove the empty directory `upper/rel` if it adds nothing over the lower
/// view: absent below (a mount point the runner made) or present with the same
/// mode and owner and not opaque.
pub(super) fn prune_dir(upper: &Path, lower: &Path, rel: &Path) -> Result<()> {
    if !plain_path(upper, rel) || !plain_path(lower, rel) {
        return Ok(());
    }
    let path = upper.join(rel);
    let Ok(md) = fs::symlink_metadata(&path) else {
        return Ok(());
    };
    if !md.is_dir()
        || fs::read_dir(&path)
            .map_err(io("reading", &path))?
            .next()
            .is_some()
    {
        return Ok(());
    }
    let redundant = match fs::symlink_metadata(lower.join(rel)) {
        Err(_) => true,
        Ok(l) => {
            let opaque = xattr::get(&path, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
            l.is_dir()
                && !opaque
                && l.mode() == md.mode()
                && l.uid() == md.uid()
                && l.gid() == md.gid()
        }
    };
    if redundant {
        fs::remove_dir(&path).map_err(io("removing", &path))?;
        debug!(dir = %rel.display(), "dropped an empty directory the runner made");
    }
    Ok(())
}

/// Whether every directory on the way from `root` to `rel` that exists is a
/// real directory, not a symlink: the job wrote the upper directory and could have made
/// `etc` a link to a host path, which we must never act on.
pub(super) fn plain_path(root: &Path, rel: &Path) -> bool {
    let mut dir = root.to_owned();
    for comp in rel.parent().into_iter().flat_map(Path::components) {
        dir.push(comp);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            // Nothing there: nothing to follow either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            _ => return false,
        }
    }
    true
}

/// The content of `path` if it is a regular file (not following symlinks).
/// Callers check the directories on the way with [`plain_path`].
pub(super) fn read_regular(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_file() => fs::read(path).map(Some).map_err(io("reading", path)),
        Ok(_) => Ok(None),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// Entries (not counting `dir` itself) and bytes of regular file data below `dir`.
pub fn count(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io("reading", &d))? {
            let entry = entry.map_err(io("reading", &d))?;
            let ft = entry.file_type().map_err(io("reading", entry.path()))?;
            files += 1;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                bytes += entry.metadata().map_err(io("reading", entry.path()))?.len();
            }
        }
    }
    Ok((files, bytes))
}

/// Whether `md` is an overlayfs whiteout (a 0/0 character device).
pub fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn unwrite_drops_exact_copies_and_cuts_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, lower) = (dir.path().join("u"), dir.path().join("l"));
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(upper.join("etc/a"), "base\nours\n").unwrap();
        unwrite(&upper, Path::new("etc/a"), b"base\nours\n", Some(b"ours\n")).unwrap();
        assert!(!upper.join("etc/a").exists());
        fs::write(upper.join("etc/b"), "base\nours\njob\n").unwrap();
        unwrite(&upper, Path::new("etc/b"), b"base\nours\n", Some(b"ours\n")).unwrap();
        assert_eq!(fs::read(upper.join("etc/b")).unwrap(), b"base\nours\njob\n");
        fs::write(upper.join("etc/c"), "base\njob\nours\n").unwrap();
        unwrite(&upper, Path::new("etc/c"), b"base\nours\n", Some(b"ours\n")).unwrap();
        assert_eq!(fs::read(upper.join("etc/c")).unwrap(), b"base\njob\n");
        unwrite(&upper, Path::new("etc/missing"), b"x", None).unwrap();
    }

    #[test]
    fn symlinked_directories_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, outside) = (dir.path().join("u"), dir.path().join("host"));
        fs::create_dir_all(outside.join("portage")).unwrap();
        fs::create_dir_all(&upper).unwrap();
        fs::write(outside.join("portage/make.conf"), "ours\n").unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("etc")).unwrap();
        unwrite(&upper, Path::new("etc/portage/make.conf"), b"ours\n", None).unwrap();
        assert!(outside.join("portage/make.conf").exists());
        assert!(plain_path(&outside, Path::new("portage/make.conf")));
        assert!(!plain_path(&upper, Path::new("etc/portage/make.conf")));
    }

    #[test]
    fn prune_keeps_dirs_with_content_or_new_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, lower) = (dir.path().join("u"), dir.path().join("l"));
        for d in ["same", "chmod", "full", "made/deep"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        fs::create_dir_all(lower.join("same")).unwrap();
        fs::create_dir_all(lower.join("chmod")).unwrap();
        fs::create_dir_all(lower.join("full")).unwrap();
        fs::write(upper.join("full/x"), "").unwrap();
        fs::set_permissions(upper.join("chmod"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(lower.join("chmod"), fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["same", "chmod", "full", "made/deep", "made"] {
            prune_dir(&upper, &lower, Path::new(d)).unwrap();
        }
        assert!(!upper.join("same").exists());
        assert!(upper.join("chmod").exists());
        assert!(upper.join("full/x").exists());
        assert!(!upper.join("made").exists());
    }

    #[test]
    fn count_counts_entries_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f"), "12345").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("a/l")).unwrap();
        assert_eq!(count(dir.path()).unwrap(), (4, 5));
    }
}
