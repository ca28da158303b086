//! `snapshot sync`: find the newest snapshot on the mirrors the way
//! emerge-webrsync does, download it, verify it and hand it to the importer.
//!
//! ```text
//! for date in yesterday, the day before, ... (N days; or only --revert's date)
//!     for mirror in order (skipping those found unreachable)
//!         DATE's .md5sum: gentoo-D.tar.xz, portage-D.tar.xz, gentoo-D.tar.bz2, portage-D.tar.bz2
//!         first one found --> already tagged? "no newer snapshot", nothing downloaded
//!                         --> tarball (+ .gpgsig) into store/tmp/sync-PID-*/, md5 while it streams
//!                         --> md5 + gpgv --> import_snapshot --> done
//!         refused / timed out --> warn, mirror skipped from now on
//!         bad file            --> warn, next mirror for the same date
//! ```
//!
//! The walk runs dates outermost, as emerge-webrsync does, so the newest date
//! any mirror has wins; a dead mirror costs one warning, not one per date.
//! The walk stops at the first date a mirror has: if every mirror fails to
//! serve it verified, sync fails rather than quietly importing an older tree.
//!
//! The md5 is checked here, while the bytes arrive, so that a corrupt copy
//! fails over to the next mirror before the importer sees it; the importer
//! checks it again for free as it streams. The signature, when a keyring is
//! given, is checked here with gpgv and is then required.
//!
//! Mirrors are `http://` and `https://` URLs (ureq, rustls: no system
//! OpenSSL; checked against the system's CA bundle or `SSL_CERT_FILE`),
//! `file://` URLs and plain directory paths, each holding `snapshots/<file>`
//! as the Gentoo mirrors do.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

pub use self::fetch::Mirror;
use self::fetch::{FetchError, Fetcher};
use super::error::{Error, Result};
use super::tag::{self, SnapshotDate};
use super::{import_snapshot, open_repo, ImportLock, ImportOptions, Outcome};
use crate::store::Store;

mod fetch;

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The mirror used when none is given, as emerge-webrsync's `GENTOO_MIRRORS`
/// default.
pub const DEFAULT_MIRROR: &str = "https://distfiles.gentoo.org";

/// The file names tried for one date, in emerge-webrsync's order.
pub fn candidate_names(date: SnapshotDate) -> [String; 4] {
    let d = compact(date);
    [
        format!("gentoo-{d}.tar.xz"),
        format!("portage-{d}.tar.xz"),
        format!("gentoo-{d}.tar.bz2"),
        format!("portage-{d}.tar.bz2"),
    ]
}

/// `YYYYMMDD`, as the mirrors name files.
fn compact(date: SnapshotDate) -> String {
    format!("{:04}{:02}{:02}", date.year, date.month, date.day)
}

/// Parse a mirror file date given as `YYYYMMDD` (or `YYYY-MM-DD`).
pub fn parse_file_date(s: &str) -> Result<SnapshotDate> {
    if s.len() == 8 && s.bytes().all(|c| c.is_ascii_digit()) {
        format!("{}-{}-{}", &s[..4], &s[4..6], &s[6..]).parse()
    } else {
        s.parse()
    }
}

/// The day before `date`.
fn day_before(date: SnapshotDate) -> SnapshotDate {
    SnapshotDate::from_timestamp(date.to_timestamp() - DAY)
}

/// The mirrors' file date for a snapshot whose tag is `tag_date` (one day later).
fn file_date_of_tag(tag_date: SnapshotDate) -> SnapshotDate {
    SnapshotDate::from_timestamp(tag_date.to_timestamp() + DAY)
}

/// The tag date of the mirrors' file date (one day earlier).
fn tag_date_of_file(file_date: SnapshotDate) -> SnapshotDate {
    day_before(file_date)
}

/// Yesterday in UTC: the newest date a published snapshot can carry.
pub fn yesterday_utc() -> SnapshotDate {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // from_timestamp already steps back one day.
    SnapshotDate::from_timestamp(now)
}

/// The dates to try, newest first: `max_age_days` days back from `start`.
pub fn walk_dates(start: SnapshotDate, max_age_days: u32) -> Vec<SnapshotDate> {
    let mut dates = Vec::with_capacity(max_age_days as usize);
    let mut d = start;
    for _ in 0..max_age_days {
        dates.push(d);
        d = day_before(d);
    }
    dates
}

/// What to sync and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Mirrors in the order to try them.
    pub mirrors: Vec<String>,
    /// The repository name in the store.
    pub repo: String,
    /// Check each snapshot's `.gpgsig` against this keyring (then required).
    pub keyring: Option<PathBuf>,
    /// Take this file date (`gentoo-YYYYMMDD`) even if older than the newest tag.
    pub revert: Option<SnapshotDate>,
    /// How many days back the walk goes.
    pub max_age_days: u32,
    /// The first date of the walk (default: yesterday, UTC).
    pub start: Option<SnapshotDate>,
    /// Keep the downloaded files here instead of deleting them.
    pub keep_download: Option<PathBuf>,
    /// `false` skips md5 and signature checks.
    pub verify: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Connect timeout and the longest a read may stall.
    pub timeout: Duration,
    /// Accept a snapshot stamped more than a day past this machine's clock.
    pub allow_future: bool,
}

impl SyncOptions {
    /// Defaults: the `gentoo` repository, 40 days, verified, 30 s timeouts.
    /// No mirrors means [`DEFAULT_MIRROR`].
    pub fn new(mirrors: Vec<String>) -> SyncOptions {
        let mirrors = if mirrors.is_empty() {
            vec![DEFAULT_MIRROR.to_owned()]
        } else {
            mirrors
        };
        SyncOptions {
            mirrors,
            repo: crate::store::DEFAULT_REPO.to_owned(),
            keyring: None,
            revert: None,
            max_age_days: 40,
            start: None,
            keep_download: None,
            verify: true,
            progress: false,
            timeout: Duration::from_secs(30),
            allow_future: false,
        }
    }
}

/// How a sync ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The newest snapshot on the mirrors is not newer than the newest tag;
    /// nothing was downloaded.
    UpToDate {
        /// The newest snapshot file name found.
        file: String,
        /// The newest tag already in the repository.
        newest: String,
    },
    /// A snapshot was downloaded, verified and handed to the importer.
    Fetched {
        /// The mirror it came from.
        mirror: String,
        /// Its file name.
        file: String,
        /// What the importer did.
        outcome: Outcome,
    },
}

/// The newest snapshot tag of repository `repo`, if any.
fn newest_tag(store: &Store, repo: &str) -> Result<Option<(SnapshotDate, String)>> {
    if !store.repo_path(repo).is_dir() {
        return Ok(None);
    }
    let tags = tag::list_tags(&open_repo(store, repo)?)?;
    Ok(tags
        .iter()
        .max_by_key(|t| t.time)
        .and_then(|t| t.name.parse().ok().map(|d| (d, t.name.clone()))))
}

/// Whether a tag named `date` exists in repository `repo`.
fn has_tag(store: &Store, repo: &str, date: SnapshotDate) -> Result<bool> {
    if !store.repo_path(repo).is_dir() {
        return Ok(false);
    }
    let name = date.to_string();
    Ok(tag::list_tags(&open_repo(store, repo)?)?
        .iter()
        .any(|t| t.name == name))
}

/// Sync repository `opts.repo` from the mirrors (the caller holds its
/// [`ImportLock`]). Warnings about mirrors that fail go to the log (`warn`).
pub fn sync_snapshot(store: &Store, opts: &SyncOptions, lock: &ImportLock) -> Result<SyncOutcome> {
    let mirrors = check_sync_options(opts)?;
    let dates = match opts.revert {
        Some(d) => vec![d],
        None => walk_dates(opts.start.unwrap_or_else(yesterday_utc), opts.max_age_days),
    };
    let (Some(first), Some(last)) = (dates.first().copied(), dates.last().copied()) else {
        return Err(Error::BadMirror {
            mirror: String::new(),
            problem: "--max-age-days must be at least 1".to_owned(),
        });
    };
    let newest = newest_tag(store, &opts.repo)?;

    let tmp_root = store.tmp_dir();
    fs::create_dir_all(&tmp_root).map_err(Error::io("creating", &tmp_root))?;
    let work = tempfile::Builder::new()
        .prefix(&Store::scratch_prefix("sync"))
        .tempdir_in(&tmp_root)
        .map_err(Error::io("creating a directory in", &tmp_root))?;
    let fetcher = Fetcher::new(opts.timeout, opts.progress);

    let mut run = SyncRun {
        store,
        opts,
        lock,
        alive: vec![true; mirrors.len()],
        mirrors: &mirrors,
        fetcher: &fetcher,
        work: work.path(),
        newest: newest.as_ref(),
        last_unreachable: String::new(),
    };
    for date in dates {
        if let Some(done) = run.try_date(date)? {
            return Ok(done);
        }
        if !run.alive.iter().any(|a| *a) {
            return Err(Error::Unreachable {
                last: run.last_unreachable,
            });
        }
    }
    Err(Error::NoSnapshot {
        newest: compact(first),
        oldest: compact(last),
        mirrors: mirrors.len(),
    })
}

/// One sync's state while it walks the dates.
struct SyncRun<'a> {
    store: &'a Store,
    opts: &'a SyncOptions,
    lock: &'a ImportLock,
    mirrors: &'a [Mirror],
    fetcher: &'a Fetcher,
    /// The scratch directory downloads go to.
    work: &'a Path,
    /// The repository's newest tag, if any: its date and name.
    newest: Option<&'a (SnapshotDate, String)>,
    /// Per mirror, false once it did not answer.
    alive: Vec<bool>,
    /// Why the last mirror found unreachable was.
    last_unreachable: String,
}

impl SyncRun<'_> {
    /// Try each live mirror for a snapshot of `date`: the outcome when one is
    /// imported or need not be; `None` when no mirror has one.
    fn try_date(&mut self, date: SnapshotDate) -> Result<Option<SyncOutcome>> {
        let mut found: Option<String> = None;
        let mut last_failure = String::new();
        // Mirrors that answered but lack this date: worth a warning only if
        // another mirror has it.
        let mut lacking: Vec<usize> = Vec::new();
        for (i, mirror) in self.mirrors.iter().enumerate() {
            if !self.alive[i] {
                continue;
            }
            let md5_dest = self.work.join("md5sum");
            let name = match probe(self.fetcher, mirror, date, &md5_dest) {
                Probe::Found(name) => name,
                Probe::Lacking => {
                    lacking.push(i);
                    continue;
                }
                Probe::Unreachable(why) => {
                    self.skip(i, &why);
                    self.last_unreachable = why;
                    continue;
                }
                Probe::Failed(why) => {
                    self.failed(i, &why);
                    last_failure = why;
                    continue;
                }
            };
            debug!(mirror = %self.opts.mirrors[i], file = %name, "snapshot found");
            // Decide before downloading.
            if let Some(done) = up_to_date(self.store, self.opts, self.newest, date, &name)? {
                return Ok(Some(done));
            }
            for &j in &lacking {
                warn!(
                    "mirror {} has no snapshot dated {}, trying the next",
                    self.opts.mirrors[j],
                    compact(date)
                );
            }
            lacking.clear();
            found = Some(name.clone());

            match download_verified(self.fetcher, mirror, &name, &md5_dest, self.work, self.opts) {
                Ok(tarball) => {
                    let outcome = import(self.store, self.opts, &tarball, self.lock)?;
                    if let Some(keep) = &self.opts.keep_download {
                        keep_files(self.work, &name, keep)?;
                    }
                    return Ok(Some(SyncOutcome::Fetched {
                        mirror: self.opts.mirrors[i].clone(),
                        file: name,
                        outcome,
                    }));
                }
                Err(e) => {
                    let (skip, why) = download_failure(e, mirror, &name);
                    if skip {
                        self.skip(i, &why);
                    } else {
                        self.failed(i, &why);
                    }
                    last_failure = why;
                }
            }
        }
        match found {
            Some(file) => Err(Error::NoGoodMirror {
                file,
                last: last_failure,
            }),
            None => Ok(None),
        }
    }

    /// Mirror `i` did not answer: skip it from now on.
    fn skip(&mut self, i: usize, why: &str) {
        warn!(
            "mirror {} unreachable, skipping it: {why}",
            self.opts.mirrors[i]
        );
        self.alive[i] = false;
    }

    /// Mirror `i` failed: try the next.
    fn failed(&self, i: usize, why: &str) {
        warn!(
            "mirror {} failed, trying the next: {why}",
            self.opts.mirrors[i]
        );
    }
}

/// The mirrors to sync from, once the options are checked: at least one
/// mirror, and the keyring there if signatures are to be checked.
fn check_sync_options(opts: &SyncOptions) -> Result<Vec<Mirror>> {
    let mirrors = opts
        .mirrors
        .iter()
        .map(|m| Mirror::parse(m))
        .collect::<Result<Vec<_>>>()?;
    if mirrors.is_empty() {
        return Err(Error::BadMirror {
            mirror: String::new(),
            problem: "no mirror given".to_owned(),
        });
    }
    if let Some(k) = &opts.keyring {
        if opts.verify && !k.is_file() {
            return Err(Error::io("opening the keyring", k)(
                io::ErrorKind::NotFound.into(),
            ));
        }
    }
    Ok(mirrors)
}

/// What one mirror answers about one date.
enum Probe {
    /// The snapshot file of that name is there (its md5 sum fetched).
    Found(String),
    /// The mirror answered, without a snapshot of that date.
    Lacking,
    /// The mirror did not answer: skip it from now on.
    Unreachable(String),
    /// The mirror answered with an error: try the next.
    Failed(String),
}

/// Ask `mirror` for the md5 sum of each name a snapshot of `date` may have,
/// fetching the first found into `md5_dest`.
fn probe(fetcher: &Fetcher, mirror: &Mirror, date: SnapshotDate, md5_dest: &Path) -> Probe {
    for name in candidate_names(date) {
        let md5_name = format!("{name}.md5sum");
        match fetcher.fetch(mirror, &md5_name, md5_dest, false) {
            Ok(_) => return Probe::Found(name),
            Err(FetchError::NotFound) => continue,
            Err(FetchError::Unreachable(why)) => return Probe::Unreachable(why),
            Err(FetchError::Failed(why)) => return Probe::Failed(why),
        }
    }
    Probe::Lacking
}

/// The outcome when snapshot file `name`, dated `date`, need not be
/// downloaded: its tag (the file date minus one day) is there, or, unless
/// reverting, a newer one is.
fn up_to_date(
    store: &Store,
    opts: &SyncOptions,
    newest: Option<&(SnapshotDate, String)>,
    date: SnapshotDate,
    name: &str,
) -> Result<Option<SyncOutcome>> {
    let tag_date = tag_date_of_file(date);
    if opts.revert.is_none() {
        if let Some((newest_date, newest_name)) = newest {
            if *newest_date >= tag_date {
                info!(file = %name, newest = %newest_name, "no newer snapshot");
                return Ok(Some(SyncOutcome::UpToDate {
                    file: name.to_owned(),
                    newest: newest_name.clone(),
                }));
            }
        }
    } else if has_tag(store, &opts.repo, tag_date)? {
        info!(file = %name, "snapshot already imported");
        return Ok(Some(SyncOutcome::UpToDate {
            file: name.to_owned(),
            newest: tag_date.to_string(),
        }));
    }
    Ok(None)
}

/// Why downloading `name` from `mirror` failed, and whether to skip the
/// mirror from now on (unreachable) rather than only trying the next.
fn download_failure(err: FetchError, mirror: &Mirror, name: &str) -> (bool, String) {
    match err {
        FetchError::Unreachable(why) => (true, why),
        FetchError::NotFound => (
            false,
            format!("{} has an md5 sum but no tarball", mirror.location(name)),
        ),
        FetchError::Failed(why) => (false, why),
    }
}

/// Download `name` (and its signature when a keyring is given) into `dir`
/// and verify it against the `.md5sum` already fetched into `md5_file`.
fn download_verified(
    fetcher: &Fetcher,
    mirror: &Mirror,
    name: &str,
    md5_file: &Path,
    dir: &Path,
    opts: &SyncOptions,
) -> std::result::Result<PathBuf, FetchError> {
    let tarball = dir.join(name);
    // The importer and --keep-download expect the mirrors' names side by side.
    let md5_path = dir.join(format!("{name}.md5sum"));
    fs::rename(md5_file, &md5_path)
        .map_err(|e| FetchError::Failed(format!("renaming {}: {e}", md5_file.display())))?;
    let started = std::time::Instant::now();
    let fetched = fetcher.fetch(mirror, name, &tarball, true)?;
    info!(
        file = name,
        bytes = fetched.bytes,
        secs = started.elapsed().as_secs_f64(),
        "downloaded"
    );
    if !opts.verify {
        return Ok(tarball);
    }
    let expected = super::verify::read_md5sum(&md5_path, &tarball).map_err(|e| match e {
        // Name the mirror's file, not the download's temporary copy.
        Error::Md5File { problem, .. } => {
            FetchError::Failed(format!("{}.md5sum: {problem}", mirror.location(name)))
        }
        e => FetchError::Failed(e.to_string()),
    })?;
    if expected != fetched.md5 {
        return Err(FetchError::Failed(format!(
            "md5 mismatch for {}: expected {expected}, got {}",
            mirror.location(name),
            fetched.md5
        )));
    }
    debug!(md5 = %fetched.md5, "md5 verified");
    if let Some(keyring) = &opts.keyring {
        let sig_name = format!("{name}.gpgsig");
        match fetcher.fetch(mirror, &sig_name, &dir.join(&sig_name), false) {
            Ok(_) => {}
            Err(FetchError::NotFound) => {
                return Err(FetchError::Failed(format!(
                    "no signature {}",
                    mirror.location(&sig_name)
                )))
            }
            Err(e) => return Err(e),
        }
        super::verify::verify_signature(&tarball, keyring)
            .map_err(|e| FetchError::Failed(format!("{}: {e}", mirror.location(name))))?;
        debug!(keyring = %keyring.display(), "signature verified");
    }
    Ok(tarball)
}

/// Hand a verified download to the importer.
fn import(store: &Store, opts: &SyncOptions, tarball: &Path, lock: &ImportLock) -> Result<Outcome> {
    let mut io = ImportOptions::new(tarball);
    io.repo = opts.repo.clone();
    // md5 again, for free while streaming; the signature was checked above.
    io.verify = opts.verify;
    io.keyring = None;
    io.allow_older = opts.revert.is_some();
    io.allow_future = opts.allow_future;
    io.progress = opts.progress;
    import_snapshot(store, &io, lock)
}

/// Move the downloaded `name` and its `.md5sum`/`.gpgsig` into `keep`.
fn keep_files(dir: &Path, name: &str, keep: &Path) -> Result<()> {
    fs::create_dir_all(keep).map_err(Error::io("creating", keep))?;
    for n in [
        name.to_owned(),
        format!("{name}.md5sum"),
        format!("{name}.gpgsig"),
    ] {
        let from = dir.join(&n);
        if !from.exists() {
            continue;
        }
        let to = keep.join(&n);
        if fs::rename(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(Error::io("copying to", &to))?;
        }
    }
    Ok(())
}

/// The mirrors' file date of the snapshot tagged `tag` (for messages).
pub fn file_name_date(tag: SnapshotDate) -> String {
    compact(file_date_of_tag(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> SnapshotDate {
        s.parse().unwrap()
    }

    #[test]
    fn walk_goes_back_one_day_at_a_time_across_months() {
        let dates = walk_dates(d("2026-03-02"), 4);
        let names: Vec<String> = dates.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            names,
            ["2026-03-02", "2026-03-01", "2026-02-28", "2026-02-27"]
        );
        assert!(walk_dates(d("2026-03-02"), 0).is_empty());
    }

    #[test]
    fn candidates_follow_emerge_webrsync_order() {
        assert_eq!(
            candidate_names(d("2026-08-21")),
            [
                "gentoo-20260821.tar.xz",
                "portage-20260821.tar.xz",
                "gentoo-20260821.tar.bz2",
                "portage-20260821.tar.bz2"
            ]
        );
    }

    #[test]
    fn file_dates_are_a_day_after_tags() {
        assert_eq!(tag_date_of_file(d("2026-03-01")), d("2026-02-28"));
        assert_eq!(file_name_date(d("2026-12-31")), "20270101");
        assert_eq!(parse_file_date("20260821").unwrap(), d("2026-08-21"));
        assert_eq!(parse_file_date("2026-08-21").unwrap(), d("2026-08-21"));
        assert!(parse_file_date("20260230").is_err());
        assert!(parse_file_date("2026082").is_err());
    }

    #[test]
    fn yesterday_is_before_today() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let y = yesterday_utc();
        assert!(y.to_timestamp() <= now && now - y.to_timestamp() < DAY);
    }

    #[test]
    fn no_mirror_means_gentoo_default() {
        let o = SyncOptions::new(Vec::new());
        assert_eq!(o.mirrors, [DEFAULT_MIRROR]);
        assert_eq!(
            Mirror::parse(&o.mirrors[0]).unwrap(),
            Mirror::Http("https://distfiles.gentoo.org".into())
        );
        assert_eq!(SyncOptions::new(vec!["/m".into()]).mirrors, ["/m"]);
    }

    #[test]
    fn mirrors_parse_by_scheme() {
        assert_eq!(
            Mirror::parse("http://m.example/gentoo/").unwrap(),
            Mirror::Http("http://m.example/gentoo".into())
        );
        assert_eq!(
            Mirror::parse("file:///srv/mirror").unwrap(),
            Mirror::Dir("/srv/mirror".into())
        );
        assert_eq!(
            Mirror::parse("rel/mirror").unwrap(),
            Mirror::Dir("rel/mirror".into())
        );
        assert!(Mirror::parse("ftp://m.example").is_err());
        assert!(Mirror::parse("file://relative").is_err());
        assert!(Mirror::parse("").is_err());
        assert_eq!(
            Mirror::parse("https://m.example")
                .unwrap()
                .location("a.tar.xz"),
            "https://m.example/snapshots/a.tar.xz"
        );
    }

    #[test]
    fn local_mirror_fetch_hashes_and_reports_missing() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("m/snapshots")).unwrap();
        fs::write(tmp.path().join("m/snapshots/f"), b"").unwrap();
        let m = Mirror::Dir(tmp.path().join("m"));
        let f = Fetcher::new(Duration::from_secs(5), false);
        let got = f.fetch(&m, "f", &tmp.path().join("out"), false).unwrap();
        assert_eq!(got.md5, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(got.bytes, 0);
        assert!(matches!(
            f.fetch(&m, "nope", &tmp.path().join("out2"), false),
            Err(FetchError::NotFound)
        ));
    }

    #[test]
    fn closed_port_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let m = Mirror::Http(format!("http://127.0.0.1:{port}"));
        let tmp = tempfile::tempdir().unwrap();
        let f = Fetcher::new(Duration::from_secs(5), false);
        assert!(matches!(
            f.fetch(&m, "x", &tmp.path().join("o"), false),
            Err(FetchError::Unreachable(_))
        ));
    }
}
