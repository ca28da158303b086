//! Checking a snapshot before it is trusted: the mirrors' `.md5sum` file and the
//! detached OpenPGP signature `.gpgsig`, as emerge-webrsync checks them.
//!
//! Both are checked over the very bytes the importer reads, in its one read of
//! the file: the md5 is computed over the compressed bytes as they stream
//! through, and the same bytes are fed to `gpgv --keyring KEYRING SIG -`
//! ([`SignatureCheck`]). Both verdicts are in before anything enters the
//! repository. (Letting gpgv read FILE itself would check one read of it and
//! import another: a FIFO, or a file replaced in between, could serve signed
//! bytes to gpgv and other bytes to the import.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

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

/// `gpgv --keyring KEYRING TARBALL.gpgsig DATA`, after checking that the
/// signature and the keyring exist.
fn gpgv_command(tarball: &Path, keyring: &Path, data: &std::ffi::OsStr) -> Result<Command> {
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
    let mut cmd = Command::new("gpgv");
    cmd.arg("--keyring").arg(&keyring).arg(&sig).arg(data);
    Ok(cmd)
}

/// gpgv's verdict as an error naming `tarball`: its last line.
fn gpgv_verdict(tarball: &Path, status: ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("gpgv: {}", l.trim().trim_start_matches("gpgv: ")))
        .unwrap_or_else(|| format!("gpgv exited with {status}"));
    Err(Error::Signature {
        path: tarball.to_owned(),
        reason,
    })
}

/// Verify `tarball`'s detached signature `tarball.gpgsig` against `keyring`
/// with gpgv reading the file itself. Only for a private copy nobody else
/// writes (`snapshot sync`'s download); the importer uses [`SignatureCheck`].
/// A missing signature, a missing keyring or a bad signature is an error
/// naming the cause.
pub fn verify_signature(tarball: &Path, keyring: &Path) -> Result<()> {
    let out = gpgv_command(tarball, keyring, tarball.as_os_str())?
        .output()
        .map_err(Error::io("running gpgv for", tarball))?;
    gpgv_verdict(tarball, out.status, &out.stderr)
}

/// A gpgv checking `tarball.gpgsig` over the bytes fed to its [`GpgvInput`]:
/// the importer's own read of the tarball. Dropped before [`finish`]
/// (an import that failed), it kills gpgv.
///
/// [`finish`]: SignatureCheck::finish
pub struct SignatureCheck {
    tarball: PathBuf,
    child: Option<Child>,
    input: Option<GpgvInput>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl SignatureCheck {
    /// Start gpgv for `tarball`'s signature against `keyring`.
    pub fn start(tarball: &Path, keyring: &Path) -> Result<SignatureCheck> {
        let mut child = gpgv_command(tarball, keyring, "-".as_ref())?
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io("running gpgv for", tarball))?;
        let input = child.stdin.take().map(|s| GpgvInput { stdin: Some(s) });
        // Drained on a thread of its own, so gpgv never blocks on it.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = e.read_to_end(&mut v);
                v
            })
        });
        Ok(SignatureCheck {
            tarball: tarball.to_owned(),
            child: Some(child),
            input,
            stderr,
        })
    }

    /// Where the tarball's bytes go, in order; taken once.
    pub fn input(&mut self) -> Option<GpgvInput> {
        self.input.take()
    }

    /// gpgv's verdict, once its input was fed and dropped.
    pub fn finish(mut self) -> Result<()> {
        drop(self.input.take());
        let child = self.child.take().expect("invariant: finish runs once");
        let out = child
            .wait_with_output()
            .map_err(Error::io("running gpgv for", &self.tarball))?;
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        gpgv_verdict(&self.tarball, out.status, &stderr)
    }
}

impl Drop for SignatureCheck {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pipe into a [`SignatureCheck`]'s gpgv.
pub struct GpgvInput {
    stdin: Option<ChildStdin>,
}

impl GpgvInput {
    /// Feed `bytes` to gpgv. If gpgv has gone (it gave up on a bad
    /// signature file, say), the rest is dropped: its verdict says why.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(stdin) = &mut self.stdin {
            if stdin.write_all(bytes).is_err() {
                self.stdin = None;
            }
        }
    }
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
