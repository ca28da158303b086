//! Checking a snapshot before it is trusted: the mirrors' `.md5sum` file and the
//! detached OpenPGP signature `.gpgsig`, as emerge-webrsync checks them.
//!
//! The md5 is computed over the compressed bytes while they stream through the
//! importer (no second read); it is compared before anything is installed.
//! The signature is checked with `gpgv --keyring KEYRING SIG FILE` before the
//! import starts, because gpgv reads the whole file itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{Error, Result};

/// The expected md5 of `tarball`, read from `md5_file` in the mirrors' format
/// (`<md5>  <name>` per line, as `md5sum` writes it). With several lines, the
/// one naming the tarball is used.
pub fn read_md5sum(md5_file: &Path, tarball: &Path) -> Result<String> {
    let text = std::fs::read_to_string(md5_file).map_err(Error::io("reading", md5_file))?;
    let bad = |problem: &str| Error::Md5File {
        path: md5_file.to_owned(),
        problem: problem.to_owned(),
    };
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.trim().splitn(2, char::is_whitespace);
            let sum = it.next().unwrap_or("");
            let file = it.next().unwrap_or("").trim_start().trim_start_matches('*');
            (sum, file)
        })
        .collect();
    let (sum, _) = match lines.as_slice() {
        [] => return Err(bad("no md5 sum in it")),
        [only] => *only,
        many => *many
            .iter()
            .find(|(_, f)| Some(*f) == name.as_deref())
            .ok_or_else(|| bad("no line names the tarball"))?,
    };
    if sum.len() != 32 || !sum.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("not an md5 sum (32 hex digits)"));
    }
    Ok(sum.to_ascii_lowercase())
}

/// `FILE.md5sum` beside the tarball, if it exists.
pub fn default_md5_file(tarball: &Path) -> Option<PathBuf> {
    let p = append_ext(tarball, "md5sum");
    p.exists().then_some(p)
}

/// `FILE.gpgsig`: where the mirrors put the detached signature.
pub fn signature_file(tarball: &Path) -> PathBuf {
    append_ext(tarball, "gpgsig")
}

fn append_ext(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Verify `tarball`'s detached signature `tarball.gpgsig` against `keyring`
/// with gpgv. A missing signature, a missing keyring or a bad signature is an
/// error naming the cause.
pub fn verify_signature(tarball: &Path, keyring: &Path) -> Result<()> {
    let sig = signature_file(tarball);
    let fail = |reason: String| Error::Signature {
        path: tarball.to_owned(),
        reason,
    };
    if !sig.exists() {
        return Err(fail(format!("no signature file {}", sig.display())));
    }
    if !keyring.exists() {
        return Err(fail(format!("no keyring {}", keyring.display())));
    }
    // gpgv takes the keyring path relative to ~/.gnupg unless it has a slash.
    let keyring = std::path::absolute(keyring).map_err(Error::io("resolving", keyring))?;
    let out = Command::new("gpgv")
        .arg("--keyring")
        .arg(&keyring)
        .arg(&sig)
        .arg(tarball)
        .output()
        .map_err(Error::io("running gpgv for", tarball))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("gpgv: {}", l.trim().trim_start_matches("gpgv: ")))
        .unwrap_or_else(|| format!("gpgv exited with {}", out.status));
    Err(fail(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5sum_files_in_the_mirrors_format() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("s.md5sum");
        let tar = Path::new("/x/gentoo-20260820.tar.xz");
        let sum = "d41d8cd98f00b204e9800998ecf8427e";
        std::fs::write(&f, format!("{sum}  gentoo-20260820.tar.xz\n")).unwrap();
        assert_eq!(read_md5sum(&f, tar).unwrap(), sum);
        std::fs::write(
            &f,
            format!(
                "{}  other.tar.xz\n{}  gentoo-20260820.tar.xz\n",
                "0".repeat(32),
                sum.to_uppercase()
            ),
        )
        .unwrap();
        assert_eq!(read_md5sum(&f, tar).unwrap(), sum);
        std::fs::write(&f, "nonsense  gentoo-20260820.tar.xz\n").unwrap();
        assert!(read_md5sum(&f, tar).is_err());
        std::fs::write(&f, "").unwrap();
        assert!(read_md5sum(&f, tar).is_err());
    }
}
