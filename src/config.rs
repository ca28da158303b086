//! The configuration file: the defaults a build server sets once (mirrors,
//! keyring, run layout, make.conf additions, cache directories, mount sizes).
//!
//! `main` loads it once, before dispatching, into [`Loaded`]: `--config FILE`
//! (or `PORTROOT_CONFIG`) if given, which must exist, else
//! [`SITE_CONFIG`] if it exists; then the store's [`STORE_CONFIG`], if it
//! exists, overrides that key by key. The store file wins because it is the
//! more specific one: a second store (another arch, a test store) differs from
//! the site defaults without a second site file. The subcommands then take
//! each default as `flag.or(config).unwrap_or(built-in)`, so a flag always
//! wins. Every key is documented in `doc/portroot.toml.example`, which is
//! also what `portroot config example` prints.
//!
//! Values are checked while parsing (sizes, URLs, names, absolute paths), so a
//! bad value is reported like a bad key: one line naming the file, line and
//! column, from the span the toml parser gives.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use portroot_runner::cgroup::Cpus;
use portroot_runner::plan::TmpfsMount;

mod slurm;
mod values;

pub use self::slurm::{Scheduler, SlurmConfig};
pub use self::values::*;

/// The site-wide configuration file, read when no `--config` is given.
pub const SITE_CONFIG: &str = "/etc/portroot/portroot.toml";

/// The store's own configuration file, relative to the store root.
pub const STORE_CONFIG: &str = "config.toml";

/// The commented example: every key, what it does, its default.
pub const EXAMPLE: &str = include_str!("../doc/portroot.toml.example");

/// The mount cache budget when neither flag nor config sets one.
pub const DEFAULT_CACHE_SIZE: u64 = portroot_fs::DEFAULT_CACHE_BYTES;

/// The FUSE worker threads when neither flag nor config sets them.
pub const DEFAULT_THREADS: u16 = portroot_fs::DEFAULT_THREADS;

/// Why the configuration could not be loaded. Every variant names the file;
/// `main` prints it as one line and exits 2, like a usage error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config FILE` (or `PORTROOT_CONFIG`) names a file that is not there.
    #[error("{path}: no such configuration file", path = path.display())]
    Missing {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read (permissions, not UTF-8, ...).
    #[error("{path}: reading the configuration", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A syntax error, an unknown key, a wrong type or a bad value.
    #[error("{path}:{line}:{column}: {message}", path = path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The parser's message, one line.
        message: String,
    },
}

/// One configuration file's contents. Every key is optional: unset keys fall
/// through to the next file, then to the command's built-in default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Snapshot mirrors for `snapshot sync`, tried in order (at least one,
    /// each one `snapshot sync` can read).
    #[serde(default, deserialize_with = "mirrors")]
    pub mirrors: Option<Vec<String>>,
    /// The keyring snapshot signatures are checked against; when set, a
    /// signature is required (as `--keyring`).
    #[serde(default, deserialize_with = "absolute_path")]
    pub keyring: Option<PathBuf>,
    /// The store repository holding the snapshots (a valid store name).
    #[serde(default, deserialize_with = "repo_name")]
    pub repo: Option<String>,
    /// `[run]`: defaults of `run` and `shell`.
    #[serde(default)]
    pub run: RunConfig,
    /// `[mount]`: defaults of `mount`.
    #[serde(default)]
    pub mount: MountConfig,
    /// `[slurm]`: how `run --scheduler slurm` submits.
    #[serde(default)]
    pub slurm: SlurmConfig,
}

/// `[run]`: how the chroots of `run` and `shell` are set up.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Where the tree appears in the chroot.
    pub layout: Option<TreeLayout>,
    /// Host network or loopback only.
    pub network: Option<Network>,
    /// Parallel chroots (at least 1).
    #[serde(default, deserialize_with = "jobs")]
    pub jobs: Option<NonZeroUsize>,
    /// FEATURES words added after portroot's own.
    pub features: Option<Vec<Feature>>,
    /// Lines appended to make.conf, verbatim (each one line).
    #[serde(default, deserialize_with = "make_conf_lines")]
    pub make_conf_lines: Option<Vec<String>>,
    /// Host DISTDIR (absolute).
    #[serde(default, deserialize_with = "absolute_path")]
    pub distfiles: Option<PathBuf>,
    /// Host PKGDIR (absolute).
    #[serde(default, deserialize_with = "absolute_path")]
    pub binpkgs: Option<PathBuf>,
    /// The binhost of generations runs write into: a store name or an
    /// absolute directory (see [`binhost`]).
    #[serde(default, deserialize_with = "binhost")]
    pub binhost: Option<PathBuf>,
    /// The `local` mirror URL.
    pub local_mirror: Option<MirrorUrl>,
    /// Memory per job in bytes (at least 1M).
    #[serde(default, deserialize_with = "memory")]
    pub memory: Option<u64>,
    /// CPUs' worth of time per job (0.01 to 4096).
    #[serde(default, deserialize_with = "cpus")]
    pub cpus: Option<Cpus>,
    /// Processes per job (1 to [`cgroup::MAX_PIDS`]).
    #[serde(default, deserialize_with = "pids")]
    pub pids: Option<u64>,
    /// tmpfs mounts in every job, `PATH[=SIZE]` (see [`parse_tmpfs`]).
    #[serde(default, deserialize_with = "tmpfs")]
    pub tmpfs: Option<Vec<TmpfsMount>>,
    /// Who runs the jobs: this machine or Slurm.
    pub scheduler: Option<Scheduler>,
}

/// `[mount]`: how `portroot mount` serves a tree.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Object cache budget in bytes (more than 0).
    #[serde(default, deserialize_with = "cache_size")]
    pub cache_size: Option<u64>,
    /// FUSE worker threads, 1 to 64.
    #[serde(default, deserialize_with = "threads")]
    pub threads: Option<u16>,
    /// FUSE over io_uring: auto, on or off.
    #[serde(default, deserialize_with = "named")]
    pub io_uring: Option<IoUring>,
}

/// One file that was read, and what it set.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// What it set.
    pub config: Config,
}

/// The effective configuration and the files it came from, in the order
/// read (later files override earlier ones).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every file's keys merged, later files winning.
    pub merged: Config,
    /// The files read; empty when none exists (or `--no-config`).
    pub files: Vec<ConfigFile>,
}

impl Config {
    /// Parse one file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                // toml's messages may end in a newline or span lines (a list
                // of expected keys); the error must stay one line.
                message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
            }
        })
    }

    /// Read and parse `path`; `Ok(None)` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<Config>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// `self` with every key `over` sets replaced by `over`'s value.
    pub fn merge(self, over: Config) -> Config {
        Config {
            mirrors: over.mirrors.or(self.mirrors),
            keyring: over.keyring.or(self.keyring),
            repo: over.repo.or(self.repo),
            run: RunConfig {
                layout: over.run.layout.or(self.run.layout),
                network: over.run.network.or(self.run.network),
                jobs: over.run.jobs.or(self.run.jobs),
                features: over.run.features.or(self.run.features),
                make_conf_lines: over.run.make_conf_lines.or(self.run.make_conf_lines),
                distfiles: over.run.distfiles.or(self.run.distfiles),
                binpkgs: over.run.binpkgs.or(self.run.binpkgs),
                binhost: over.run.binhost.or(self.run.binhost),
                local_mirror: over.run.local_mirror.or(self.run.local_mirror),
                memory: over.run.memory.or(self.run.memory),
                cpus: over.run.cpus.or(self.run.cpus),
                pids: over.run.pids.or(self.run.pids),
                tmpfs: over.run.tmpfs.or(self.run.tmpfs),
                scheduler: over.run.scheduler.or(self.run.scheduler),
            },
            mount: MountConfig {
                cache_size: over.mount.cache_size.or(self.mount.cache_size),
                threads: over.mount.threads.or(self.mount.threads),
                io_uring: over.mount.io_uring.or(self.mount.io_uring),
            },
            slurm: self.slurm.merge(over.slurm),
        }
    }

    /// Every key as `(dotted name, value as TOML)`, `None` when unset, in
    /// the example file's order: what `config show` prints.
    pub fn entries(&self) -> Vec<(&'static str, Option<String>)> {
        fn quoted(s: &str) -> String {
            toml_string(s)
        }
        fn list<S: AsRef<str>>(items: &[S]) -> String {
            let inner: Vec<String> = items.iter().map(|s| toml_string(s.as_ref())).collect();
            format!("[{}]", inner.join(", "))
        }
        fn path(p: &Path) -> String {
            toml_string(&p.to_string_lossy())
        }
        let r = &self.run;
        vec![
            ("mirrors", self.mirrors.as_deref().map(list)),
            ("keyring", self.keyring.as_deref().map(path)),
            ("repo", self.repo.as_deref().map(quoted)),
            ("run.layout", r.layout.map(|l| quoted(l.name()))),
            ("run.network", r.network.map(|n| quoted(n.name()))),
            ("run.jobs", r.jobs.map(|j| j.to_string())),
            ("run.features", r.features.as_deref().map(list)),
            (
                "run.make_conf_lines",
                r.make_conf_lines.as_deref().map(list),
            ),
            ("run.distfiles", r.distfiles.as_deref().map(path)),
            ("run.binpkgs", r.binpkgs.as_deref().map(path)),
            ("run.binhost", r.binhost.as_deref().map(path)),
            (
                "run.local_mirror",
                r.local_mirror.as_ref().map(|u| quoted(u.as_str())),
            ),
            ("run.memory", r.memory.map(|b| b.to_string())),
            ("run.cpus", r.cpus.map(|c| c.to_string())),
            ("run.pids", r.pids.map(|n| n.to_string())),
            (
                "run.tmpfs",
                r.tmpfs.as_deref().map(|t| {
                    let specs: Vec<String> = t.iter().map(tmpfs_spec).collect();
                    list(&specs)
                }),
            ),
            ("run.scheduler", r.scheduler.map(|s| quoted(s.word()))),
            (
                "mount.cache_size",
                self.mount.cache_size.map(|b| b.to_string()),
            ),
            ("mount.threads", self.mount.threads.map(|t| t.to_string())),
            (
                "mount.io_uring",
                self.mount.io_uring.map(|w| quoted(w.name())),
            ),
        ]
        .into_iter()
        .chain(self.slurm.entries())
        .collect()
    }
}

impl Loaded {
    /// Load the configuration as the module docs describe. `explicit` is
    /// `--config`/`PORTROOT_CONFIG`; `site` is normally [`SITE_CONFIG`].
    pub fn load(
        explicit: Option<&Path>,
        site: &Path,
        store_root: &Path,
    ) -> Result<Loaded, ConfigError> {
        let mut files = Vec::new();
        let base = match explicit {
            Some(path) => Some(Config::read(path)?.ok_or_else(|| ConfigError::Missing {
                path: path.to_owned(),
            })?)
            .map(|c| (path.to_owned(), c)),
            None => Config::read(site)?.map(|c| (site.to_owned(), c)),
        };
        files.extend(base.map(|(path, config)| ConfigFile { path, config }));
        let store_file = store_root.join(STORE_CONFIG);
        if let Some(config) = Config::read(&store_file)? {
            files.push(ConfigFile {
                path: store_file,
                config,
            });
        }
        let merged = files
            .iter()
            .fold(Config::default(), |acc, f| acc.merge(f.config.clone()));
        for f in &files {
            tracing::debug!(file = %f.path.display(), "configuration read");
        }
        Ok(Loaded { merged, files })
    }

    /// The text of `config show`: each key with its effective value and the
    /// file it came from; unset keys commented out with their default.
    /// `defaults` gives the built-in default's description per dotted key.
    pub fn show(&self, defaults: &dyn Fn(&str) -> String) -> String {
        let mut out = String::new();
        if self.files.is_empty() {
            out.push_str("# no configuration file: built-in defaults\n");
        } else {
            out.push_str("# read, later overriding earlier:\n");
            for f in &self.files {
                let _ = writeln!(out, "#   {}", f.path.display());
            }
        }
        let mut section = "";
        for (key, value) in self.merged.entries() {
            let (sect, name) = key.split_once('.').unwrap_or(("", key));
            if sect != section {
                let _ = write!(out, "\n[{sect}]\n");
                section = sect;
            }
            match value {
                Some(v) => {
                    let from = self
                        .files
                        .iter()
                        .rev()
                        .find(|f| {
                            f.config
                                .entries()
                                .iter()
                                .any(|(k, v)| *k == key && v.is_some())
                        })
                        .map_or_else(String::new, |f| f.path.display().to_string());
                    let _ = writeln!(out, "{name} = {v}  # {from}");
                }
                None => {
                    let _ = writeln!(out, "# {name}: {} (default)", defaults(key));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/portroot/portroot.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn tmpfs_specs_are_absolute_paths_with_an_optional_size() {
        let c = parse("[run]\ntmpfs = [\"/var/tmp/portage=8G\", \"/scratch\"]").unwrap();
        let t = c.run.tmpfs.unwrap();
        assert_eq!(t[0].target, Path::new("/var/tmp/portage"));
        assert_eq!(t[0].size, Some(8 << 30));
        assert_eq!(
            (t[1].target.as_path(), t[1].size),
            (Path::new("/scratch"), None)
        );
        for bad in ["relative", "/", "/a/../b", "/x=0", "/x=lots"] {
            assert!(parse_tmpfs(bad).is_err(), "{bad}");
        }
        let e = parse("[run]\ntmpfs = [\"tmp\"]").unwrap_err();
        assert!(e.contains("2:9") && e.contains("must be absolute"), "{e}");
    }

    /// The example with every `# key = value` line uncommented.
    fn example_uncommented() -> String {
        EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_key_parses_and_the_example_documents_each() {
        let c = parse(&example_uncommented()).unwrap();
        for (key, value) in c.entries() {
            assert!(value.is_some(), "the example does not show {key}");
        }
        assert_eq!(
            c.mirrors.as_deref().unwrap()[0],
            "https://mirror.example.org/gentoo"
        );
        assert_eq!(
            c.keyring.as_deref(),
            Some(Path::new("/usr/share/openpgp-keys/gentoo-release.asc"))
        );
        assert_eq!(c.repo.as_deref(), Some("gentoo"));
        assert_eq!(c.run.layout, Some(TreeLayout::Modern));
        assert_eq!(c.run.network, Some(Network::Host));
        assert_eq!(c.run.jobs.map(NonZeroUsize::get), Some(8));
        assert_eq!(
            c.run
                .features
                .as_deref()
                .unwrap()
                .iter()
                .map(Feature::as_str)
                .collect::<Vec<_>>(),
            ["getbinpkg", "-ipc-sandbox"]
        );
        assert_eq!(
            c.run.make_conf_lines.as_deref().unwrap(),
            ["MAKEOPTS=\"-j8 -l8\"", "EMERGE_DEFAULT_OPTS=\"--jobs 2\""]
        );
        assert_eq!(
            c.run.distfiles.as_deref(),
            Some(Path::new("/var/cache/distfiles"))
        );
        assert_eq!(
            c.run.binpkgs.as_deref(),
            Some(Path::new("/srv/binhost/amd64"))
        );
        assert_eq!(c.run.binhost.as_deref(), Some(Path::new("binpkgs")));
        for bad in ["../x", "a/b", ".hidden"] {
            let e = parse(&format!("[run]\nbinhost = \"{bad}\"\n")).unwrap_err();
            assert!(e.contains("binhost"), "{bad}: {e}");
        }
        assert_eq!(
            c.run.local_mirror.as_ref().map(MirrorUrl::as_str),
            Some("http://mirror.lan/gentoo")
        );
        assert_eq!(c.run.memory, Some(8 << 30));
        assert_eq!(c.run.cpus, Some(Cpus::parse("2.5").unwrap()));
        assert_eq!(c.run.pids, Some(4096));
        assert_eq!(c.mount.cache_size, Some(1 << 30));
        assert_eq!(c.mount.threads, Some(2));
        assert_eq!(c.mount.io_uring, Some(IoUring::Auto));
        // As shipped, everything is commented out: copying it changes nothing.
        assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn other_spellings_of_values() {
        let c = parse(
            "[run]\nlayout = \"usr-portage\"\nnetwork = \"none\"\n[mount]\ncache_size = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.run.layout, Some(TreeLayout::UsrPortage));
        assert_eq!(c.run.network, Some(Network::None));
        assert_eq!(c.mount.cache_size, Some(1 << 20));
        assert_eq!(
            parse("[mount]\ncache_size = \"512K\"")
                .unwrap()
                .mount
                .cache_size,
            Some(512 << 10)
        );
        assert_eq!(parse("").unwrap(), Config::default());
        let c = parse("[run]\nmemory = 67108864\ncpus = 1\npids = \"x\"").unwrap_err();
        assert!(c.contains("4:8: invalid type"), "{c}");
        let c = parse("[run]\nmemory = 67108864\ncpus = \"0.5\"").unwrap();
        assert_eq!(c.run.memory, Some(64 << 20));
        assert_eq!(c.run.cpus.map(|c| c.to_string()).as_deref(), Some("0.5"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            (
                "repo = \"gentoo\"\nmirorrs = []\n",
                "2:1: unknown field `mirorrs`, expected one of `mirrors`",
            ),
            (
                "[run]\njobs = \"many\"\n",
                "2:8: invalid type: string \"many\", expected an integer from 1 to 4096",
            ),
            ("[run]\njobs = 0\n", "2:8: jobs must be 1 to 4096, not 0"),
            (
                "[mount]\n\ncache_size = \"12X\"\n",
                "3:14: bad size unit in \"12X\"",
            ),
            ("[mount]\ncache_size = -1\n", "2:14: size -1 is negative"),
            (
                "[mount]\nthreads = 65\n",
                "2:11: threads must be 1 to 64, not 65",
            ),
            (
                "[run]\nlayout = \"flat\"\n",
                "2:10: unknown variant `flat`, expected `modern` or `usr-portage`",
            ),
            (
                "[run]\nfeatures = [\"ok\", \"x\\\"y\"]\n",
                "2:12: bad FEATURES word",
            ),
            (
                "[run]\ndistfiles = \"rel/dir\"\n",
                "2:13: path \"rel/dir\" is not absolute",
            ),
            (
                "mirrors = [\"ftp.example.org\"]\n",
                "1:11: bad URL \"ftp.example.org\"",
            ),
            ("repo = \"../x\"\n", "1:8: invalid repository name"),
            ("[sync]\nx = 1\n", "1:2: unknown field `sync`"),
            ("[run\n", "1:5: "),
            (
                "[run]\nmemory = \"512\"\n",
                "2:10: memory limit must be at least 1M, not 512 bytes",
            ),
            (
                "[run]\ncpus = 0.001\n",
                "2:8: CPU count must be 0.01 to 4096, not 0.001",
            ),
            ("[run]\ncpus = \"two\"\n", "2:8: bad CPU count \"two\""),
            ("[run]\npids = 0\n", "2:8: pids must be 1 to 4194304, not 0"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            let want = format!("/etc/portroot/portroot.toml:{want}");
            assert!(
                err.starts_with(&want),
                "{text:?}: {err:?} does not start with {want:?}"
            );
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn later_files_override_key_by_key() {
        let site = parse("repo = \"a\"\n[run]\njobs = 4\nnetwork = \"none\"\n").unwrap();
        let store = parse("[run]\njobs = 2\n[mount]\nthreads = 3\n").unwrap();
        let c = site.merge(store);
        assert_eq!(c.repo.as_deref(), Some("a"));
        assert_eq!(c.run.jobs.map(NonZeroUsize::get), Some(2));
        assert_eq!(c.run.network, Some(Network::None));
        assert_eq!(c.mount.threads, Some(3));
    }

    #[test]
    fn load_reads_site_then_store_and_requires_an_explicit_file() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site.toml");
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        // Nothing anywhere: defaults, no error.
        let l = Loaded::load(None, &site, &store).unwrap();
        assert!(l.files.is_empty());
        assert_eq!(l.merged, Config::default());

        std::fs::write(&site, "[run]\njobs = 4\nnetwork = \"none\"\n").unwrap();
        std::fs::write(store.join(STORE_CONFIG), "[run]\njobs = 2\n").unwrap();
        let l = Loaded::load(None, &site, &store).unwrap();
        assert_eq!(l.files.len(), 2);
        assert_eq!(l.merged.run.jobs.map(NonZeroUsize::get), Some(2));
        assert_eq!(l.merged.run.network, Some(Network::None));
        let shown = l.show(&|_| "x".into());
        assert!(
            shown.contains(&format!(
                "jobs = 2  # {}",
                store.join(STORE_CONFIG).display()
            )),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("network = \"none\"  # {}", site.display())),
            "{shown}"
        );
        assert!(shown.contains("# layout: x (default)"), "{shown}");

        let missing = dir.path().join("nope.toml");
        let err = Loaded::load(Some(&missing), &site, &store).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{}: no such configuration file", missing.display())
        );
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1\nx", 3), (1, 3));
        assert_eq!(line_column("x", 99), (1, 2));
    }

    #[test]
    fn toml_strings_round_trip() {
        for s in ["plain", "MAKEOPTS=\"-j8\"", "back\\slash\ttab"] {
            let doc = format!("v = {}", toml_string(s));
            let t: toml::Table = toml::from_str(&doc).unwrap();
            assert_eq!(t["v"].as_str(), Some(s));
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_cache_size("1M"), Ok(1 << 20));
        for empty in ["0", "0K", "0G"] {
            assert!(parse_cache_size(empty).is_err(), "{empty}");
        }
    }
}
