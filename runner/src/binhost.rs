//! Binhost generations: jobs never write into what clients read.
//!
//! A binhost is a directory (the store's `binpkgs/` unless configured):
//!
//! ```text
//! generations/<id>/       one complete PKGDIR per run (`id` is the run id)
//! generations/<id>.json   its record (GenerationMeta): beside it, never served
//! current -> generations/<id>   the one link clients are pointed at
//! history.json            the generations published, oldest first (rollback)
//! ```
//!
//! A run makes its generation from `current` by hard links (directories made
//! again, every other entry linked: no file is copied), and its jobs write
//! into it as PKGDIR. Portage writes a binary package and its `Packages`
//! index to a temporary name and renames it into place (tested with real
//! emerge in `tests/binhost.rs`), so a link shared with an older generation
//! is replaced, never written through: the older generation never changes.
//!
//! Publishing swaps `current` atomically: the filesystem is synced (so the
//! generation's files are on disk before anything names them), a new link
//! is made under a temporary name and renamed over `current` (rename(2)
//! replaces atomically), and the directory is fsynced. A crash at any point
//! leaves `current` naming a complete generation, the old one or the new.
//!
//! This lives in the runner crate beside `caches.rs` because a generation
//! is the PKGDIR the runner binds into each job; the binary only decides
//! when to make and publish one.
//!
//! A binhost made before generations (packages straight in the directory)
//! is migrated on the first run: with no `current`, the first generation is
//! linked from the files already there.

mod index;
mod link;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub use self::index::{diff, packages, parse_index, Package, PackageDiff};
pub use self::link::{link_tree, LINK_THREADS};
use crate::error::{io, sys, Error, Result};

/// Names at the top of a binhost that are not packages (skipped when a
/// binhost made before generations becomes the first one's parent).
const OWN_NAMES: [&str; 4] = ["generations", "current", "history.json", ".lock"];

/// A generation's record, `generations/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMeta {
    /// The generation's name (the run's id).
    pub id: String,
    /// The run that made it.
    pub run: Option<String>,
    /// The generation it was linked from (`current` when it was made).
    pub parent: Option<String>,
    /// When it was made, seconds since the epoch.
    pub created: u64,
    /// How many packages it serves, counted when its run ended.
    #[serde(default)]
    pub packages: Option<usize>,
    /// When it was last published, seconds since the epoch.
    #[serde(default)]
    pub published: Option<u64>,
    /// Kept: `gc` never removes it.
    #[serde(default)]
    pub kept: bool,
}

/// A binhost directory of generations.
#[derive(Debug, Clone)]
pub struct Binhost {
    root: PathBuf,
    /// How many threads make a generation ([`LINK_THREADS`] by default).
    threads: usize,
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Binhost {
    /// The binhost at `root` (nothing is touched yet).
    pub fn new(root: impl Into<PathBuf>) -> Binhost {
        Binhost {
            root: root.into(),
            threads: LINK_THREADS,
        }
    }

    /// The same binhost, making generations with `threads` threads (1: the
    /// caller's alone, as the benchmark compares).
    pub fn with_threads(mut self, threads: usize) -> Binhost {
        self.threads = threads.max(1);
        self
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `current`, the link clients are pointed at.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    fn generations(&self) -> PathBuf {
        self.root.join("generations")
    }

    /// The directory of generation `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.generations().join(id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.generations().join(format!("{id}.json"))
    }

    /// The generation `current` names, if any.
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading the link", &link)(e)),
        }
    }

    /// The record of generation `id`; an unknown one is [`Error::Invalid`].
    pub fn meta(&self, id: &str) -> Result<GenerationMeta> {
        if !crate::name::is_valid_name(id) || !self.path(id).is_dir() {
            return Err(Error::Invalid(format!(
                "no generation {id} in the binhost {}",
                self.root.display()
            )));
        }
        let path = self.meta_path(id);
        let text = fs::read(&path).map_err(io("reading", &path))?;
        serde_json::from_slice(&text).map_err(|source| Error::Json {
            what: "parsing",
            path,
            source,
        })
    }

    /// Write a generation's record atomically.
    pub fn save_meta(&self, meta: &GenerationMeta) -> Result<()> {
        let path = self.meta_path(&meta.id);
        let text = serde_json::to_vec_pretty(meta).map_err(|source| Error::Json {
            what: "encoding",
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &text)
    }

    /// Every complete generation (a directory with its record), oldest first.
    pub fn list(&self) -> Result<Vec<GenerationMeta>> {
        let dir = self.generations();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.map_err(io("reading", &dir))?.file_name();
            let name = name.to_string_lossy();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if crate::name::is_valid_name(id) && self.path(id).is_dir() {
                out.push(self.meta(id)?);
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    /// Make generation `id` for `run` from `current` (or, in a binhost made
    /// before generations, from the packages at its top), by hard links.
    /// Built under a temporary name and renamed into place after its record
    /// is written, so a generation directory is always complete.
    pub fn create(&self, id: &str, run: Option<&str>) -> Result<GenerationMeta> {
        if !crate::name::is_valid_name(id) || id.ends_with(".json") {
            return Err(Error::Invalid(format!("bad generation name {id:?}")));
        }
        let dest = self.path(id);
        if dest.exists() {
            return Err(Error::Invalid(format!(
                "generation {id} already exists in {}",
                self.root.display()
            )));
        }
        let gens = self.generations();
        fs::create_dir_all(&gens).map_err(io("creating", &gens))?;
        // Held so that `gc` never takes the half-made `.new-<id>` for a
        // crash's leftover.
        let _lock = self.lock()?;
        let parent = self.current()?;
        let tmp = gens.join(format!(".new-{id}"));
        let _ = fs::remove_dir_all(&tmp);
        let made = (|| {
            match &parent {
                Some(p) => link_tree(&self.path(p), &tmp, &[], self.threads),
                None => link_tree(&self.root, &tmp, &OWN_NAMES, self.threads),
            }?;
            let meta = GenerationMeta {
                id: id.to_owned(),
                run: run.map(str::to_owned),
                parent: parent.clone(),
                created: now(),
                packages: None,
                published: None,
                kept: false,
            };
            self.save_meta(&meta)?;
            fs::rename(&tmp, &dest).map_err(io("renaming into place", &dest))?;
            Ok(meta)
        })();
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(self.meta_path(id));
        }
        made
    }

    /// Hold the binhost's lock (`.lock`, flock) while publishing, rolling
    /// back, keeping or collecting, so two commands never interleave their
    /// writes of `history.json` and the records.
    fn lock(&self) -> Result<Flock<fs::File>> {
        if !self.root.is_dir() {
            return Err(Error::Invalid(format!(
                "no binhost at {}",
                self.root.display()
            )));
        }
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| sys("locking", &path)(e))
    }

    /// Point `current` at generation `id` atomically and record it as
    /// published.
    pub fn publish(&self, id: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut meta = self.meta(id)?;
        let mut history = self.history()?;
        if history.last().map(String::as_str) != Some(id) {
            history.push(id.to_owned());
        }
        // The link first: if it fails, or we crash before the history is
        // written, `rollback` still goes to the generation before `id`.
        self.swap_current(id)?;
        self.save_history(&history)?;
        meta.published = Some(now());
        self.save_meta(&meta)
    }

    /// Point `current` back at the generation published before it; returns
    /// its id. Fails, changing nothing, if there is none.
    pub fn rollback(&self) -> Result<String> {
        let _lock = self.lock()?;
        let current = self.current()?;
        let mut history = self.history()?;
        while history
            .last()
            .is_some_and(|h| Some(h) == current.as_ref() || !self.path(h).is_dir())
        {
            history.pop();
        }
        let Some(target) = history.last().cloned() else {
            return Err(Error::Invalid(format!(
                "no generation published before {} in {}",
                current.as_deref().unwrap_or("none"),
                self.root.display()
            )));
        };
        // The history first: if the swap fails or we crash before it, a
        // second rollback still goes to `target`.
        self.save_history(&history)?;
        self.swap_current(&target)?;
        let mut meta = self.meta(&target)?;
        meta.published = Some(now());
        self.save_meta(&meta)?;
        Ok(target)
    }

    /// Keep generation `id` from `gc` (or let it go).
    pub fn set_kept(&self, id: &str, kept: bool) -> Result<()> {
        let _lock = self.lock()?;
        let mut meta = self.meta(id)?;
        meta.kept = kept;
        self.save_meta(&meta)
    }

    /// The generations published, oldest first, as `rollback` walks them.
    pub fn history(&self) -> Result<Vec<String>> {
        let path = self.root.join("history.json");
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|source| Error::Json {
                what: "parsing",
                path,
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    fn save_history(&self, history: &[String]) -> Result<()> {
        let path = self.root.join("history.json");
        let text = serde_json::to_vec_pretty(history).map_err(|source| Error::Json {
            what: "encoding",
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &text)
    }

    /// syncfs, a new link under a temporary name renamed over `current`,
    /// fsync of the directory: see the module's documentation.
    fn swap_current(&self, id: &str) -> Result<()> {
        let dir = fs::File::open(&self.root).map_err(io("opening", &self.root))?;
        nix::unistd::syncfs(&dir).map_err(sys("syncing the filesystem of", &self.root))?;
        let tmp = self
            .root
            .join(format!(".current.new-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let target = Path::new("generations").join(id);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io("creating the link", &tmp))?;
        let link = self.current_link();
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(io("renaming into place", &link)(e));
        }
        nix::unistd::fsync(&dir).map_err(sys("syncing", &self.root))
    }

    /// Remove generations that are not kept, not current, not among the
    /// `keep` most recently published (current counted), and not in use
    /// (`in_use`: a live run writes into it). Returns the removed ids.
    pub fn gc(&self, keep: usize, in_use: &dyn Fn(&GenerationMeta) -> bool) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let current = self.current()?;
        let history = self.history()?;
        let mut recent: Vec<&String> = Vec::new();
        for h in history.iter().rev() {
            if recent.len() >= keep {
                break;
            }
            if !recent.contains(&h) {
                recent.push(h);
            }
        }
        let mut removed = Vec::new();
        for meta in self.list()? {
            let id = &meta.id;
            if meta.kept || Some(id) == current.as_ref() || recent.contains(&id) || in_use(&meta) {
                continue;
            }
            // Record first: a generation without its record is not listed,
            // and a crash leaves only a directory the next gc removes.
            let mp = self.meta_path(id);
            fs::remove_file(&mp).map_err(io("removing", &mp))?;
            let p = self.path(id);
            fs::remove_dir_all(&p).map_err(io("removing", &p))?;
            removed.push(id.clone());
        }
        self.remove_leftovers()?;
        let kept: Vec<String> = history
            .into_iter()
            .filter(|h| self.path(h).is_dir())
            .collect();
        self.save_history(&kept)?;
        Ok(removed)
    }

    /// Directories without a record, records without a directory (a crash
    /// in `create` or `gc`) and `.new-*` ones a killed run was building.
    fn remove_leftovers(&self) -> Result<()> {
        let dir = self.generations();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(id) = name.strip_suffix(".json") {
                if !name.starts_with('.') && !self.path(id).is_dir() {
                    fs::remove_file(&path).map_err(io("removing", &path))?;
                }
                continue;
            }
            let orphan = !self.meta_path(&name).exists();
            if path.is_dir() && (name.starts_with(".new-") || orphan) {
                fs::remove_dir_all(&path).map_err(io("removing", &path))?;
            }
        }
        Ok(())
    }
}

/// `path` written under a temporary name and renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

#[cfg(test)]
mod tests;
