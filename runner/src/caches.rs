//! The host directories every job shares read-write: DISTDIR (`distfiles/`)
//! and PKGDIR (`binpkgs/`, the binhost's directory).
//!
//! [`create_distdir`] makes DISTDIR as Gentoo has it, before the first job.
//! [`check_pkgdir`] runs where a run ends: jobs bind PKGDIR `nosuid,nodev`,
//! but what they leave there is served to every binhost client, so a setuid
//! or setgid file, or a symlink that leads out of PKGDIR, is refused: moved
//! out of the binhost into the run's directory and reported.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, sys, Result};

/// Gentoo's `portage` group (acct-group/portage).
pub const PORTAGE_GID: u32 = 250;

/// Mode of DISTDIR as the portage ebuild makes `/var/cache/distfiles`:
/// group-writable, and setgid so every download stays in group `portage`
/// (portage fetches as that group with `FEATURES=userfetch`).
pub const DISTDIR_MODE: u32 = 0o2775;

/// Create `dir` as `root:portage` mode [`DISTDIR_MODE`] if it does not exist
/// (its parents as usual), atomically: made under a temporary name next to
/// it, then renamed into place, so no job ever sees it half made. An existing
/// directory is left as it is.
pub fn create_distdir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.new-{}", std::process::id()));
    let made = (|| {
        fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        nix::unistd::chown(&tmp, Some(0.into()), Some(PORTAGE_GID.into()))
            .map_err(sys("changing the owner of", &tmp))?;
        // After chown, which may clear the setgid bit.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(DISTDIR_MODE))
            .map_err(io("changing the mode of", &tmp))?;
        match fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Another run made it meanwhile: theirs stays.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir(&tmp);
                Ok(())
            }
            Err(e) => Err(io("renaming into place", dir)(e)),
        }
    })();
    if made.is_err() {
        let _ = fs::remove_dir(&tmp);
    }
    made
}

/// Why a file in PKGDIR is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unsafe {
    /// A setuid file (mode `04000`).
    Setuid,
    /// A setgid file that is not a directory (mode `02000`).
    Setgid,
    /// A symlink whose target is absolute or climbs above PKGDIR.
    SymlinkLeaves {
        /// The link's target, as stored.
        target: PathBuf,
    },
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsafe::Setuid => write!(f, "setuid"),
            Unsafe::Setgid => write!(f, "setgid"),
            Unsafe::SymlinkLeaves { target } => {
                write!(f, "symlink leaving the binhost (-> {})", target.display())
            }
        }
    }
}

/// A file [`check_pkgdir`] took out of PKGDIR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Where it was, relative to PKGDIR.
    pub path: PathBuf,
    /// Why it was refused.
    pub reason: Unsafe,
    /// Where it is now (setuid and setgid bits cleared).
    pub moved_to: PathBuf,
}

/// Refuse what must not be served from `pkgdir`: move every unsafe file
/// ([`find_unsafe`]) to the same relative path under `quarantine` and return
/// them, in path order. Nothing found: nothing is created.
pub fn check_pkgdir(pkgdir: &Path, quarantine: &Path) -> Result<Vec<Refused>> {
    let mut refused = Vec::new();
    for (path, reason) in find_unsafe(pkgdir)? {
        let from = pkgdir.join(&path);
        let to = quarantine.join(&path);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        move_out(&from, &to)?;
        if !matches!(reason, Unsafe::SymlinkLeaves { .. }) {
            // Keep the evidence, defused.
            let mode = fs::symlink_metadata(&to)
                .map_err(io("inspecting", &to))?
                .mode();
            fs::set_permissions(&to, fs::Permissions::from_mode(mode & 0o1777))
                .map_err(io("changing the mode of", &to))?;
        }
        refused.push(Refused {
            path,
            reason,
            moved_to: to,
        });
    }
    Ok(refused)
}

/// `from` renamed to `to`; across filesystems (a configured `--binpkgs` on
/// another disk than the store), copied and removed.
fn move_out(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EXDEV) => {
            return Err(io("moving out of the binhost", from)(e))
        }
        Err(_) => {}
    }
    let md = fs::symlink_metadata(from).map_err(io("inspecting", from))?;
    if md.is_symlink() {
        let target = fs::read_link(from).map_err(io("reading", from))?;
        std::os::unix::fs::symlink(target, to).map_err(io("creating", to))?;
    } else {
        fs::copy(from, to).map_err(io("copying", from))?;
    }
    fs::remove_file(from).map_err(io("removing", from))
}

/// Every file below `pkgdir` that is setuid, setgid (directories aside: a
/// setgid directory only passes its group on) or a symlink leading out of
/// `pkgdir`, as paths relative to it, in path order. Symlinks are never
/// followed.
pub fn find_unsafe(pkgdir: &Path) -> Result<Vec<(PathBuf, Unsafe)>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = pkgdir.join(&rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.as_os_str().is_empty() => {
                return Ok(found)
            }
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("listing", &dir))?;
            let path = rel.join(entry.file_name());
            let md = entry.metadata().map_err(io("inspecting", entry.path()))?;
            if md.is_dir() {
                stack.push(path);
            } else if md.is_symlink() {
                let target = fs::read_link(entry.path()).map_err(io("reading", entry.path()))?;
                if link_leaves(&path, &target) {
                    found.push((path, Unsafe::SymlinkLeaves { target }));
                }
            } else if md.mode() & 0o4000 != 0 {
                found.push((path, Unsafe::Setuid));
            } else if md.mode() & 0o2000 != 0 {
                found.push((path, Unsafe::Setgid));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Whether the symlink at `link` (relative to the top directory) pointing to
/// `target` leads out of that directory, judged on the text alone: an
/// absolute target (it means another place on the host than in the job), or
/// one whose `..`s climb above the top.
pub fn link_leaves(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: usize = link.parent().map_or(0, |p| p.components().count());
    for c in target.components() {
        match c {
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_stay_and_links_that_leave() {
        let stays = [
            ("a", "b"),
            ("All/a.gpkg.tar", "../Packages"),
            ("x/y/z", "../../w"),
            ("x/y", "./z/../../q"),
        ];
        for (link, target) in stays {
            assert!(
                !link_leaves(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
        let leaves = [
            ("a", "/etc/shadow"),
            ("a", ".."),
            ("x/a", "../../b"),
            ("x/a", "y/../../.."),
            ("a", "/var/cache/binpkgs/b"),
        ];
        for (link, target) in leaves {
            assert!(
                link_leaves(Path::new(link), Path::new(target)),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn unsafe_files_are_found_and_moved_out_defused() {
        let tmp = tempfile::tempdir().unwrap();
        let pkgdir = tmp.path().join("binpkgs");
        fs::create_dir_all(pkgdir.join("app-misc/sub")).unwrap();
        let file = |rel: &str, mode: u32| {
            let p = pkgdir.join(rel);
            fs::write(&p, "x").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        file("Packages", 0o644);
        file("app-misc/ok.gpkg.tar", 0o644);
        file("app-misc/suid.gpkg.tar", 0o4755);
        file("app-misc/sub/sgid", 0o2755);
        fs::set_permissions(pkgdir.join("app-misc"), fs::Permissions::from_mode(0o2775)).unwrap();
        std::os::unix::fs::symlink("../Packages", pkgdir.join("app-misc/index")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", pkgdir.join("shadow")).unwrap();

        let found = find_unsafe(&pkgdir).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|(p, r)| format!("{} {r}", p.display()))
            .collect();
        assert_eq!(
            names,
            [
                "app-misc/sub/sgid setgid",
                "app-misc/suid.gpkg.tar setuid",
                "shadow symlink leaving the binhost (-> /etc/shadow)",
            ]
        );

        let quarantine = tmp.path().join("run/refused");
        let refused = check_pkgdir(&pkgdir, &quarantine).unwrap();
        assert_eq!(refused.len(), 3);
        for r in &refused {
            assert!(
                fs::symlink_metadata(pkgdir.join(&r.path)).is_err(),
                "{r:?} left"
            );
            assert_eq!(r.moved_to, quarantine.join(&r.path));
        }
        let moved = fs::metadata(quarantine.join("app-misc/suid.gpkg.tar")).unwrap();
        assert_eq!(moved.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read_link(quarantine.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(pkgdir.join("app-misc/ok.gpkg.tar").is_file());
        assert!(find_unsafe(&pkgdir).unwrap().is_empty());
        assert!(check_pkgdir(&pkgdir, &tmp.path().join("none"))
            .unwrap()
            .is_empty());
        assert!(!tmp.path().join("none").exists());
    }

    #[test]
    fn a_missing_pkgdir_has_nothing_unsafe() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(find_unsafe(&tmp.path().join("nope")).unwrap().is_empty());
    }
}
