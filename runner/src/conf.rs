//! Portage configuration written into a chroot before the job starts, as the
//! seed does by hand: `make.conf` additions (FEATURES, DISTDIR, PKGDIR),
//! `repos.conf/gentoo.conf`, the `local` mirror and the host's `resolv.conf`.
//!
//! The texts are built by pure functions (unit-tested); [`ChrootConf::write`]
//! runs inside the chroot after `pivot_root`, so every path resolves within it
//! and every write lands in the job's overlay upper directory, never in the
//! stage.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Result};

/// FEATURES every job gets on top of the stage's own, as in the seed.
pub const FEATURES: &str = "buildpkg cgroup ipc-sandbox network-sandbox parallel-fetch";

/// DISTDIR inside every chroot. It stays under /var/cache with the
/// usr-portage layout too: /usr/portage is the read-only tree, so nothing can
/// be bound below it.
pub const DISTDIR: &str = "/var/cache/distfiles";

/// PKGDIR inside every chroot (see [`DISTDIR`]).
pub const PKGDIR: &str = "/var/cache/binpkgs";

/// Where the main tree appears inside the chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TreeLayout {
    /// `/var/db/repos/gentoo` (current Gentoo default).
    Modern,
    /// `/usr/portage`, as older stages and the seed expect.
    UsrPortage,
}

impl TreeLayout {
    /// Every layout, in the order `--help` lists them.
    pub const ALL: [TreeLayout; 2] = [TreeLayout::Modern, TreeLayout::UsrPortage];

    /// Its name in flags, the config and `run.json`.
    pub fn name(self) -> &'static str {
        match self {
            TreeLayout::Modern => "modern",
            TreeLayout::UsrPortage => "usr-portage",
        }
    }

    /// What it means, for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            TreeLayout::Modern => "/var/db/repos/gentoo (current Gentoo default)",
            TreeLayout::UsrPortage => "/usr/portage, as older stages and the seed expect",
        }
    }

    /// The main tree's location inside the chroot.
    pub fn main_location(self) -> PathBuf {
        match self {
            TreeLayout::Modern => repo_location("gentoo"),
            TreeLayout::UsrPortage => PathBuf::from("/usr/portage"),
        }
    }
}

impl std::str::FromStr for TreeLayout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<TreeLayout, String> {
        TreeLayout::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown layout {s:?}: modern or usr-portage"))
    }
}

/// One FEATURES word added after [`FEATURES`]: optionally `-`, then
/// letters, digits, `_` and `-`. Anything else (a quote, `$`, a space)
/// would break the make.conf line it is written into, so no other can be
/// made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Feature(String);

impl Feature {
    /// The word.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Feature {
    type Error = String;
    fn try_from(word: String) -> std::result::Result<Feature, String> {
        let body = word.strip_prefix('-').unwrap_or(&word);
        if body.is_empty()
            || !body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "bad FEATURES word {word:?}: letters, digits, _ and - only, optionally after one -"
            ));
        }
        Ok(Feature(word))
    }
}

impl std::str::FromStr for Feature {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Feature, String> {
        Feature::try_from(s.to_owned())
    }
}

impl AsRef<str> for Feature {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Feature> for String {
    fn from(f: Feature) -> String {
        f.0
    }
}

/// A mirror URL, `scheme://rest` with no whitespace, quote or control
/// character: it is written into portage's `mirrors` file as one word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MirrorUrl(String);

impl MirrorUrl {
    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MirrorUrl {
    type Error = String;
    fn try_from(url: String) -> std::result::Result<MirrorUrl, String> {
        let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
        }) && !url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'');
        if ok {
            Ok(MirrorUrl(url))
        } else {
            Err(format!("bad URL {url:?}: expected scheme://host/path"))
        }
    }
}

impl std::str::FromStr for MirrorUrl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<MirrorUrl, String> {
        MirrorUrl::try_from(s.to_owned())
    }
}

impl AsRef<str> for MirrorUrl {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<MirrorUrl> for String {
    fn from(u: MirrorUrl) -> String {
        u.0
    }
}

/// Where a further repository `name` appears inside the chroot, whatever the
/// layout.
pub fn repo_location(name: &str) -> PathBuf {
    Path::new("/var/db/repos").join(name)
}

/// One repository known to portage inside the chroot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConf {
    /// Repository name (`gentoo` for the main tree).
    pub name: String,
    /// Its location inside the chroot.
    pub location: PathBuf,
}

/// The configuration written into one chroot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChrootConf {
    /// The main tree first, then each `--repo-ref`.
    pub repos: Vec<RepoConf>,
    /// DISTDIR inside the chroot.
    pub distdir: PathBuf,
    /// PKGDIR inside the chroot.
    pub pkgdir: PathBuf,
    /// `--local-mirror URL`: the `local` mirror for fetch-restricted files.
    pub local_mirror: Option<MirrorUrl>,
    /// The host's `/etc/resolv.conf`, read before entering the chroot.
    pub resolv_conf: Option<Vec<u8>>,
    /// FEATURES words added after [`FEATURES`]. Absent in records written
    /// before it.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// Lines appended to `make.conf` after portroot's own, verbatim.
    #[serde(default)]
    pub make_conf_lines: Vec<String>,
}

impl ChrootConf {
    /// The lines appended to `make.conf`.
    pub fn make_conf(&self) -> String {
        let mut features = String::from(FEATURES);
        for word in &self.features {
            features.push(' ');
            features.push_str(word.as_str());
        }
        let mut out = format!(
            "\n# added by portroot\nFEATURES=\"${{FEATURES}} {features}\"\nDISTDIR=\"{}\"\nPKGDIR=\"{}\"\n",
            self.distdir.display(),
            self.pkgdir.display()
        );
        for line in &self.make_conf_lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The whole of `repos.conf/gentoo.conf`.
    pub fn repos_conf(&self) -> String {
        let mut out = String::from("# written by portroot\n[DEFAULT]\nmain-repo = gentoo\n");
        for repo in &self.repos {
            out.push_str(&format!(
                "\n[{}]\nlocation = {}\nsync-type = git\nauto-sync = no\n",
                repo.name,
                repo.location.display()
            ));
        }
        out
    }

    /// The line of `/etc/portage/mirrors`, if a local mirror was given.
    pub fn mirrors(&self) -> Option<String> {
        self.local_mirror
            .as_ref()
            .map(|url| format!("local {}\n", url.as_str()))
    }

    /// Write everything below `root` (`/` once inside the chroot).
    pub fn write(&self, root: &Path) -> Result<()> {
        let portage = root.join("etc/portage");
        fs::create_dir_all(&portage).map_err(io("creating", &portage))?;

        // make.conf may be a directory of fragments (portage reads them in
        // order): add one of ours last rather than guessing which to edit.
        let make_conf = portage.join("make.conf");
        let target = if make_conf.is_dir() {
            make_conf.join("zz-portroot.conf")
        } else {
            make_conf
        };
        append(&target, self.make_conf().as_bytes())?;

        let repos_dir = portage.join("repos.conf");
        fs::create_dir_all(&repos_dir).map_err(io("creating", &repos_dir))?;
        let gentoo_conf = repos_dir.join("gentoo.conf");
        fs::write(&gentoo_conf, self.repos_conf()).map_err(io("writing", &gentoo_conf))?;

        if let Some(mirrors) = self.mirrors() {
            append(&portage.join("mirrors"), mirrors.as_bytes())?;
        }
        if let Some(resolv) = &self.resolv_conf {
            let path = root.join("etc/resolv.conf");
            // A stage may ship resolv.conf as a symlink (systemd-resolved):
            // replace the link rather than write through it.
            if path.is_symlink() {
                fs::remove_file(&path).map_err(io("removing", &path))?;
            }
            fs::write(&path, resolv).map_err(io("writing", &path))?;
        }
        Ok(())
    }
}

fn append(path: &Path, text: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("opening", path))?;
    f.write_all(text).map_err(io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ChrootConf {
        ChrootConf {
            repos: vec![
                RepoConf {
                    name: "gentoo".into(),
                    location: "/var/db/repos/gentoo".into(),
                },
                RepoConf {
                    name: "extra".into(),
                    location: "/var/db/repos/extra".into(),
                },
            ],
            distdir: "/var/cache/distfiles".into(),
            pkgdir: "/var/cache/binpkgs".into(),
            local_mirror: Some("http://mirror.lan/gentoo".parse().unwrap()),
            resolv_conf: Some(b"nameserver 10.0.0.1\n".to_vec()),
            features: Vec::new(),
            make_conf_lines: Vec::new(),
        }
    }

    #[test]
    fn make_conf_adds_extra_features_and_lines_after_ours() {
        let mut c = conf();
        c.features = vec![
            "getbinpkg".parse().unwrap(),
            "-ipc-sandbox".parse().unwrap(),
        ];
        c.make_conf_lines = vec!["MAKEOPTS=\"-j8\"".into(), "# note".into()];
        let text = c.make_conf();
        assert!(
            text.contains(&format!(
                "FEATURES=\"${{FEATURES}} {FEATURES} getbinpkg -ipc-sandbox\"\n"
            )),
            "{text}"
        );
        assert!(
            text.ends_with("PKGDIR=\"/var/cache/binpkgs\"\nMAKEOPTS=\"-j8\"\n# note\n"),
            "{text}"
        );
    }

    #[test]
    fn records_without_the_extra_fields_still_load() {
        let mut json = serde_json::to_value(conf()).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("features");
        obj.remove("make_conf_lines");
        let back: ChrootConf = serde_json::from_value(json).unwrap();
        assert_eq!(back, conf());
    }

    #[test]
    fn make_conf_keeps_stage_features_and_sets_dirs() {
        let text = conf().make_conf();
        assert!(text.contains(
            "FEATURES=\"${FEATURES} buildpkg cgroup ipc-sandbox network-sandbox parallel-fetch\"\n"
        ));
        assert!(text.contains("DISTDIR=\"/var/cache/distfiles\"\n"));
        assert!(text.contains("PKGDIR=\"/var/cache/binpkgs\"\n"));
    }

    #[test]
    fn repos_conf_has_main_repo_and_a_section_per_repo() {
        let text = conf().repos_conf();
        assert!(text.starts_with("# written by portroot\n[DEFAULT]\nmain-repo = gentoo\n"));
        assert!(text.contains("[gentoo]\nlocation = /var/db/repos/gentoo\nsync-type = git\n"));
        assert!(text.contains("[extra]\nlocation = /var/db/repos/extra\nsync-type = git\n"));
    }

    #[test]
    fn write_appends_to_make_conf_file_and_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/portage")).unwrap();
        fs::write(root.join("etc/portage/make.conf"), "COMMON_FLAGS=\"-O2\"\n").unwrap();
        fs::write(root.join("etc/portage/mirrors"), "# stage mirrors\n").unwrap();
        conf().write(root).unwrap();
        let make = fs::read_to_string(root.join("etc/portage/make.conf")).unwrap();
        assert!(make.starts_with("COMMON_FLAGS=\"-O2\"\n"), "{make}");
        assert!(make.contains("PKGDIR=\"/var/cache/binpkgs\""), "{make}");
        assert_eq!(
            fs::read_to_string(root.join("etc/portage/mirrors")).unwrap(),
            "# stage mirrors\nlocal http://mirror.lan/gentoo\n"
        );
        assert_eq!(
            fs::read(root.join("etc/resolv.conf")).unwrap(),
            b"nameserver 10.0.0.1\n"
        );

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/portage/make.conf")).unwrap();
        conf().write(root).unwrap();
        let frag = fs::read_to_string(root.join("etc/portage/make.conf/zz-portroot.conf")).unwrap();
        assert!(frag.contains("DISTDIR=\"/var/cache/distfiles\""), "{frag}");
        assert!(root.join("etc/portage/repos.conf/gentoo.conf").is_file());
    }

    #[test]
    fn resolv_conf_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("etc/resolv.conf")).unwrap();
        conf().write(root).unwrap();
        assert_eq!(fs::read(outside.path()).unwrap(), b"");
        assert!(!root.join("etc/resolv.conf").is_symlink());
    }

    #[test]
    fn features_and_mirror_urls_that_would_break_their_line_cannot_be_made() {
        for ok in ["getbinpkg", "-ipc-sandbox", "parallel_install"] {
            assert_eq!(ok.parse::<Feature>().unwrap().as_str(), ok);
        }
        for bad in ["", "-", "a b", "x\"y", "$(id)", "--x y"] {
            assert!(bad.parse::<Feature>().is_err(), "{bad:?}");
        }
        for ok in ["http://mirror.lan/gentoo", "file:///srv/distfiles"] {
            assert_eq!(ok.parse::<MirrorUrl>().unwrap().as_str(), ok);
        }
        for bad in ["mirror.lan", "://x", "http://", "http://a b", "http://x\n"] {
            assert!(bad.parse::<MirrorUrl>().is_err(), "{bad:?}");
        }
        // run.json holds them as plain strings, and a bad one is refused there too.
        let f: Vec<Feature> = serde_json::from_str(r#"["getbinpkg"]"#).unwrap();
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"["getbinpkg"]"#);
        assert!(serde_json::from_str::<Vec<Feature>>(r#"["a b"]"#).is_err());
    }

    #[test]
    fn layouts_are_read_back_from_their_names() {
        for l in TreeLayout::ALL {
            assert_eq!(l.name().parse::<TreeLayout>().unwrap(), l);
        }
        assert!("flat".parse::<TreeLayout>().is_err());
    }
}
