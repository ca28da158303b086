//! What a generation serves: its packages as portage's `Packages` index
//! lists them (what a client sees), or, where there is no index, the
//! binary package files themselves; and the difference between two
//! generations (added, removed, rebuilt).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io, Result};

/// One package instance a generation serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `category/name-version` (from the index), or the file's path without
    /// its extension when there is no index.
    pub cpv: String,
    /// What tells one build of `cpv` from another: the index's `BUILD_ID`,
    /// `MTIME`, `SIZE` and checksums, or the file's inode, size and mtime.
    pub fingerprint: String,
}

/// Files a binhost serves as packages.
const EXTENSIONS: [&str; 3] = [".gpkg.tar", ".tbz2", ".xpak"];

/// The packages the generation directory `dir` serves: its `Packages`
/// index if it has one, else every package file below it.
pub fn packages(dir: &Path) -> Result<Vec<Package>> {
    let index = dir.join("Packages");
    match fs::read_to_string(&index) {
        Ok(text) => Ok(parse_index(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut out = Vec::new();
            walk_files(dir, dir, &mut out)?;
            out.sort_by(|a, b| a.cpv.cmp(&b.cpv));
            Ok(out)
        }
        Err(e) => Err(io("reading", &index)(e)),
    }
}

/// The package stanzas of a `Packages` index: a header stanza, then one
/// stanza per package, `KEY: value` lines, separated by blank lines.
pub fn parse_index(text: &str) -> Vec<Package> {
    const FINGERPRINT: [&str; 6] = ["BUILD_ID", "MTIME", "SIZE", "SHA1", "MD5", "PATH"];
    let mut out = Vec::new();
    for stanza in text.split("\n\n").skip(1) {
        let mut fields = BTreeMap::new();
        for line in stanza.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let Some(cpv) = fields.get("CPV") else {
            continue;
        };
        let fingerprint = FINGERPRINT
            .iter()
            .map(|k| format!("{k}={}", fields.get(k).unwrap_or(&"")))
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Package {
            cpv: (*cpv).to_owned(),
            fingerprint,
        });
    }
    out
}

fn walk_files(root: &Path, dir: &Path, out: &mut Vec<Package>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            walk_files(root, &path, out)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy();
        let Some(stem) = EXTENSIONS.iter().find_map(|x| rel.strip_suffix(x)) else {
            continue;
        };
        if meta.is_file() {
            out.push(Package {
                cpv: stem.to_owned(),
                fingerprint: format!("{} {} {}", meta.ino(), meta.size(), meta.mtime()),
            });
        }
    }
    Ok(())
}

/// How one generation differs from another, by package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDiff {
    /// Packages (cpv) only the newer serves.
    pub added: Vec<String>,
    /// Packages only the older serves.
    pub removed: Vec<String>,
    /// Packages both serve, built again: another build id, time, size or
    /// content (or, without an index, another file).
    pub rebuilt: Vec<String>,
}

impl PackageDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.rebuilt.is_empty()
    }
}

/// The difference from `old` to `new`, each list sorted. A cpv with several
/// instances (binpkg-multi-instance) is rebuilt when its set of instances
/// changed.
pub fn diff(old: &[Package], new: &[Package]) -> PackageDiff {
    let group = |pkgs: &[Package]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pkgs {
            m.entry(p.cpv.clone())
                .or_default()
                .push(p.fingerprint.clone());
        }
        for v in m.values_mut() {
            v.sort();
        }
        m
    };
    let (old, new) = (group(old), group(new));
    let mut d = PackageDiff::default();
    for (cpv, prints) in &new {
        match old.get(cpv) {
            None => d.added.push(cpv.clone()),
            Some(before) if before != prints => d.rebuilt.push(cpv.clone()),
            Some(_) => {}
        }
    }
    d.removed = old
        .keys()
        .filter(|c| !new.contains_key(*c))
        .cloned()
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "ARCH: amd64\nVERSION: 0\n\n\
        BUILD_ID: 1\nCPV: app-fixture/base-1\nMTIME: 100\nPATH: app-fixture/base/base-1-1.gpkg.tar\nSIZE: 10\n\n\
        BUILD_ID: 1\nCPV: app-fixture/lib-1\nMTIME: 100\nSIZE: 20\n\n";

    #[test]
    fn parse_index_reads_every_package_stanza_but_the_header() {
        let p = parse_index(INDEX);
        let cpvs: Vec<&str> = p.iter().map(|p| p.cpv.as_str()).collect();
        assert_eq!(cpvs, ["app-fixture/base-1", "app-fixture/lib-1"]);
        assert!(p[0].fingerprint.contains("BUILD_ID=1 MTIME=100"));
    }

    #[test]
    fn diff_tells_added_removed_and_rebuilt() {
        let old = parse_index(INDEX);
        let new_text = INDEX
            .replace(
                "CPV: app-fixture/lib-1\nMTIME: 100",
                "CPV: app-fixture/lib-1\nMTIME: 200",
            )
            .replace("app-fixture/base-1\n", "app-fixture/app-1\n");
        let d = diff(&old, &parse_index(&new_text));
        assert_eq!(d.added, ["app-fixture/app-1"]);
        assert_eq!(d.removed, ["app-fixture/base-1"]);
        assert_eq!(d.rebuilt, ["app-fixture/lib-1"]);
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn another_instance_of_a_package_is_a_rebuild() {
        let old = parse_index(INDEX);
        let more = format!("{INDEX}BUILD_ID: 2\nCPV: app-fixture/lib-1\nMTIME: 300\n\n");
        let d = diff(&old, &parse_index(&more));
        assert_eq!(
            (d.added.len(), d.rebuilt.as_slice()),
            (0, &["app-fixture/lib-1".to_owned()][..])
        );
    }

    #[test]
    fn without_an_index_the_package_files_are_the_packages() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("demo")).unwrap();
        fs::write(dir.path().join("demo/pkg-1.0.gpkg.tar"), "x").unwrap();
        fs::write(dir.path().join("demo/notes.txt"), "x").unwrap();
        let p = packages(dir.path()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].cpv, "demo/pkg-1.0");
    }
}
