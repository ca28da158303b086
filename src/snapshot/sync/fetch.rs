//! Fetching files from a mirror (http, https, file:// or a directory): the
//! md5 sum computed while the bytes arrive, failures told apart as "not
//! there", "unreachable" and "failed".

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use tracing::debug;

use crate::snapshot::error::{Error, Result};

/// Where snapshots are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// An `http://` or `https://` base URL.
    Http(String),
    /// A local directory (a plain path or a `file://` URL).
    Dir(PathBuf),
}

impl Mirror {
    /// Parse a mirror as given on the command line.
    pub fn parse(s: &str) -> Result<Mirror> {
        let bad = |problem: &str| Error::BadMirror {
            mirror: s.to_owned(),
            problem: problem.to_owned(),
        };
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Ok(Mirror::Http(s.trim_end_matches('/').to_owned()))
        } else if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///srv/mirror)",
                ));
            }
            Ok(Mirror::Dir(PathBuf::from(rest)))
        } else if s.contains("://") {
            Err(bad(
                "only http, https, file:// and local paths are supported",
            ))
        } else if s.is_empty() {
            Err(bad("empty"))
        } else {
            Ok(Mirror::Dir(PathBuf::from(s)))
        }
    }

    /// Where `snapshots/<name>` is on this mirror, for messages.
    pub fn location(&self, name: &str) -> String {
        match self {
            Mirror::Http(base) => format!("{base}/snapshots/{name}"),
            Mirror::Dir(dir) => dir.join("snapshots").join(name).display().to_string(),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The mirror does not have the file (404/410, or no such local file).
    NotFound,
    /// The mirror cannot be reached at all: refused, timed out, unknown host.
    Unreachable(String),
    /// Anything else: a server error, a broken transfer, a local write error.
    Failed(String),
}

/// What a fetch wrote.
pub(super) struct Fetched {
    pub(super) md5: String,
    pub(super) bytes: u64,
}

/// Fetches files from mirrors over one HTTP agent.
pub(super) struct Fetcher {
    pub(super) agent: ureq::Agent,
    pub(super) progress: bool,
}

impl Fetcher {
    pub(super) fn new(timeout: Duration, progress: bool) -> Fetcher {
        Fetcher {
            agent: crate::http::agent(timeout),
            progress,
        }
    }

    /// Fetch `snapshots/<name>` of `mirror` into `dest`, hashing it as it comes.
    pub(super) fn fetch(
        &self,
        mirror: &Mirror,
        name: &str,
        dest: &Path,
        bar: bool,
    ) -> std::result::Result<Fetched, FetchError> {
        let location = mirror.location(name);
        let (reader, len): (Box<dyn Read>, Option<u64>) = match mirror {
            Mirror::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(FetchError::Unreachable(format!(
                        "no directory {}",
                        dir.display()
                    )));
                }
                let path = PathBuf::from(&location);
                match File::open(&path) {
                    Ok(f) => {
                        let len = f.metadata().ok().map(|m| m.len());
                        (Box::new(f), len)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(FetchError::NotFound)
                    }
                    Err(e) => return Err(FetchError::Failed(format!("opening {location}: {e}"))),
                }
            }
            Mirror::Http(_) => {
                let resp = self
                    .agent
                    .get(&location)
                    .call()
                    .map_err(|e| classify(&location, e))?;
                let status = resp.status().as_u16();
                debug!(url = %location, status, "fetched");
                match status {
                    200 => {}
                    404 | 410 => return Err(FetchError::NotFound),
                    _ => return Err(FetchError::Failed(format!("{location}: HTTP {status}"))),
                }
                let body = resp.into_body();
                let len = body.content_length();
                (Box::new(body.into_reader()), len)
            }
        };
        copy_hashed(reader, len, dest, bar && self.progress, name)
            .map_err(|e| FetchError::Failed(format!("{location}: {e}")))
    }
}

/// Sort a ureq failure: can the mirror be reached at all?
pub(super) fn classify(location: &str, e: ureq::Error) -> FetchError {
    let text = format!("{location}: {e}");
    match e {
        ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Timeout(_)
        | ureq::Error::Io(_) => FetchError::Unreachable(text),
        _ => FetchError::Failed(text),
    }
}

/// Copy `reader` into a new file `dest`, returning its md5 and size.
pub(super) fn copy_hashed(
    mut reader: impl Read,
    len: Option<u64>,
    dest: &Path,
    bar: bool,
    name: &str,
) -> io::Result<Fetched> {
    let mut out = File::create(dest)?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    let bar = bar.then(|| progress_bar(len, name));
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bytes += n as u64;
        if let Some(b) = &bar {
            b.set_position(bytes);
        }
    }
    out.sync_all()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Fetched {
        md5: hex(&h.finalize()),
        bytes,
    })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn progress_bar(len: Option<u64>, name: &str) -> indicatif::ProgressBar {
    let template = if len.is_some() {
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(format!("downloading {name}"))
}
