//! Downloads over HTTP(S) and `file://`, shared by `snapshot sync` (its
//! mirrors) and `stage add URL`: one agent configuration (timeouts on
//! connect, response and every read; the system's CA bundle), and a copy into
//! a private file that hashes every byte as it comes, so that what is checked
//! is exactly what is later read back.
//!
//! HTTP is ureq with rustls: no system OpenSSL to link, and the roots are the
//! ones OpenSSL, wget and curl use on the machine.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::debug;

/// CA bundles of the usual distributions (Gentoo's and Debian's first), as
/// OpenSSL and so wget and curl find them.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The roots https servers are checked against: the file named by
/// `SSL_CERT_FILE`, else the system's CA bundle, as emerge-webrsync's wget
/// does, so that a site's own CA or its proxy's works; Mozilla's roots built
/// into the binary only when there is no bundle.
fn root_certs() -> ureq::tls::RootCerts {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for path in from_env
        .into_iter()
        .chain(CA_BUNDLES.iter().map(PathBuf::from))
    {
        if let Some(certs) = read_ca_bundle(&path) {
            debug!(bundle = %path.display(), certs = certs.len(), "https roots");
            return ureq::tls::RootCerts::from(certs);
        }
    }
    debug!("no CA bundle found, https roots built in");
    ureq::tls::RootCerts::WebPki
}

/// The certificates of a PEM bundle; `None` if it is unreadable or holds none.
fn read_ca_bundle(path: &Path) -> Option<Vec<ureq::tls::Certificate<'static>>> {
    let pem = fs::read(path).ok()?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    (!certs.is_empty()).then_some(certs)
}

/// An HTTP agent whose every wait is bounded by `timeout`: connecting, the
/// response's head, and each read of the body (a stalled server fails, a
/// slow but moving one does not). Statuses are the caller's to judge.
pub fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(root_certs())
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("portroot/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Whether `source` is a URL [`download`] takes (`http://`, `https://`,
/// `file://`) rather than a path.
pub fn is_url(source: &str) -> bool {
    ["http://", "https://", "file://"]
        .iter()
        .any(|s| source.len() > s.len() && source[..s.len()].eq_ignore_ascii_case(s))
}

/// The last path segment of a URL, without query or fragment: the file name
/// a download is known by (`stage4.tar.xz` of `https://h/d/stage4.tar.xz?x`).
pub fn file_name(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let after_scheme = path.split_once("://")?.1;
    let name = after_scheme.rsplit('/').next()?;
    (!name.is_empty() && after_scheme.contains('/')).then_some(name)
}

/// What [`download`] wrote.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Hex sha256 of the bytes written.
    pub sha256: String,
    /// How many.
    pub bytes: u64,
}

/// Copy `url` (`http(s)://` or `file://`) into the new file `dest`, hashing
/// it as it comes; `progress(read, total)` after every chunk. An HTTP status
/// other than 200 is an error naming it.
pub fn download(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    progress: &dyn Fn(u64, Option<u64>),
) -> io::Result<Downloaded> {
    let (reader, len): (Box<dyn Read>, Option<u64>) = if let Some(path) = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("file://"))
        .map(|_| &url[7..])
    {
        let f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{url}: {e}")))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    } else {
        let resp = agent
            .get(url)
            .call()
            .map_err(|e| io::Error::other(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        debug!(%url, status, "fetched");
        if status != 200 {
            return Err(io::Error::other(format!("{url}: HTTP {status}")));
        }
        let body = resp.into_body();
        let len = body.content_length();
        (Box::new(body.into_reader()), len)
    };
    copy_hashed(reader, len, dest, progress)
        .map_err(|e| io::Error::new(e.kind(), format!("{url}: {e}")))
}

/// Copy `reader` into the new file `dest` with its sha256.
fn copy_hashed(
    mut reader: impl Read,
    len: Option<u64>,
    dest: &Path,
    progress: &dyn Fn(u64, Option<u64>),
) -> io::Result<Downloaded> {
    let mut out = File::options().write(true).create_new(true).open(dest)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
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
        progress(bytes, len);
    }
    if let Some(len) = len.filter(|&l| l != bytes) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("got {bytes} of {len} bytes"),
        ));
    }
    out.sync_all()?;
    Ok(Downloaded {
        sha256: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundles_are_read_from_pem() {
        let tmp = tempfile::tempdir().unwrap();
        let pem = tmp.path().join("ca.pem");
        // Two sections: the parser takes PEM apart, rustls checks the DER.
        fs::write(
            &pem,
            "junk\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n\
             -----BEGIN CERTIFICATE-----\nAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let certs = read_ca_bundle(&pem).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1].der(), [3, 4, 5]);
        fs::write(&pem, "no certificates here\n").unwrap();
        assert!(read_ca_bundle(&pem).is_none());
        assert!(read_ca_bundle(&tmp.path().join("missing")).is_none());
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url("https://example.invalid/s.tar.xz"));
        assert!(is_url("HTTP://example.invalid/s.tar.xz"));
        assert!(is_url("file:///srv/s.tar.xz"));
        assert!(!is_url("stage4.tar.xz"));
        assert!(!is_url("/srv/https://x"));
        assert!(!is_url("ftp://example.invalid/s.tar.xz"));
        assert!(!is_url("https://"));
    }

    #[test]
    fn the_file_name_is_the_last_segment_without_query() {
        assert_eq!(
            file_name("https://h/d/stage4.tar.xz?sig=1#x"),
            Some("stage4.tar.xz")
        );
        assert_eq!(file_name("file:///srv/s.tar"), Some("s.tar"));
        assert_eq!(file_name("https://h/"), None);
        assert_eq!(file_name("https://h"), None);
    }

    #[test]
    fn a_file_url_is_copied_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"abc").unwrap();
        let dest = dir.path().join("dest");
        let url = format!("file://{}", src.display());
        let got = download(&agent(Duration::from_secs(5)), &url, &dest, &|_, _| {}).unwrap();
        assert_eq!(
            got.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(got.bytes, 3);
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        // Never over an existing file.
        assert!(download(&agent(Duration::from_secs(5)), &url, &dest, &|_, _| {}).is_err());
    }
}
