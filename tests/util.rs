//! Shared test helpers: running the binary, temporary stores, the root/FUSE gate.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any command run through [`run`], [`ok`] or [`fails`] may take
/// before the test fails: generous for a debug build on a loaded machine
/// (a whole `emerge -e @world` of the portage fixture included), so that a
/// hang is a failure and never a stuck suite.
pub const COMMAND_BOUND: Duration = Duration::from_secs(900);

/// The `portroot` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portroot"))
}

/// A `portroot` command with `--store STORE` set and the host's
/// `PORTROOT_STORE`, `PORTROOT_CONFIG` and `RUST_LOG` cleared. (A site
/// /etc/portroot/portroot.toml still applies, as it would for a user.)
pub fn portroot(store: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("PORTROOT_STORE")
        .env_remove("PORTROOT_CONFIG")
        .env_remove("PORTROOT_NO_CONFIG")
        .env_remove("RUST_LOG")
        .arg("--store")
        .arg(store);
    c
}

/// Run a command and return its output, with stdout/stderr printed on failure
/// of the caller's assertions (via the returned strings). Bounded by
/// [`COMMAND_BOUND`].
pub fn run(cmd: &mut Command) -> Output {
    run_within(cmd, COMMAND_BOUND).0
}

/// Run `cmd` (stdin closed) and wait at most `bound`; a command still running
/// then is killed and the test fails. Returns the output and how long it took.
pub fn run_within(cmd: &mut Command, bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    // Drain both pipes on threads, so a chatty child cannot block on them.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {bound:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let output = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    (output, took)
}

/// Run and assert success, returning stdout as a string.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command {:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and assert failure with the given exit code, returning stderr.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "command {:?}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether tests that need root and `/dev/fuse` may run. Without them, a test
/// prints `skipped: ...` and returns early, unless `PORTROOT_TEST_MUST_RUN=1`
/// (set by `.ci/run`), which turns the skip into a failure so CI never skips
/// silently.
pub fn require_root() -> bool {
    let why = if !nix_is_root() {
        Some("needs root")
    } else if !Path::new("/dev/fuse").exists() {
        Some("needs /dev/fuse")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            if std::env::var_os("PORTROOT_TEST_MUST_RUN").is_some_and(|v| v == "1") {
                panic!("PORTROOT_TEST_MUST_RUN=1 but this test {why}");
            }
            eprintln!("skipped: {why}");
            false
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The mount points listed in /proc/self/mountinfo, for leak checks.
pub fn mountpoints() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading /proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Assert that no mount point lies under `dir`.
pub fn assert_no_mounts_under(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let leaked: Vec<_> = mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect();
    assert!(leaked.is_empty(), "mounts left under {dir}: {leaked:?}");
}

/// Processes whose command line mentions `needle` (the store path): a mount
/// daemon or a sandbox left running would show up here.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A throwaway GnuPG home with one signing key; kills its agent on drop.
pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let g = Gpg { home };
        g.run(&[
            "--quick-gen-key",
            "--passphrase",
            "",
            "Snapshot Signer <snap@example.org>",
            "ed25519",
            "sign",
            "never",
        ]);
        g
    }

    /// Run gpg on this home, in batch mode; panics if it fails.
    pub fn run(&self, args: &[&str]) {
        ok(Command::new("gpg")
            .arg("--batch")
            .arg("--pinentry-mode=loopback")
            .arg("--homedir")
            .arg(self.home.path())
            .args(args));
    }

    /// Sign `what`, writing the detached signature to `sig`.
    pub fn sign_to(&self, what: &Path, sig: &Path) {
        self.run(&[
            "--yes",
            "--detach-sign",
            "--output",
            sig.to_str().unwrap(),
            what.to_str().unwrap(),
        ]);
    }

    /// Sign `file`, writing `FILE.gpgsig` beside it.
    pub fn sign(&self, file: &Path) {
        self.sign_to(file, &PathBuf::from(format!("{}.gpgsig", file.display())));
    }

    /// Export the public key into the keyring file `dest`.
    pub fn keyring(&self, dest: &Path) {
        self.run(&["--yes", "--output", dest.to_str().unwrap(), "--export"]);
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

/// PKGDIR of the store's newest run: its generation of the default binhost
/// (`binpkgs/generations/<run-id>`: the one whose record was written last,
/// as run ids only tell seconds apart), or `binpkgs/` before any run made
/// one. For a test that talks to a running job through PKGDIR, or reads
/// what the last run of its store wrote.
pub fn pkgdir(store: &Path) -> PathBuf {
    let gens = store.join("binpkgs/generations");
    let newest = std::fs::read_dir(&gens)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| {
            let written = std::fs::metadata(gens.join(format!("{n}.json")))
                .and_then(|m| m.modified())
                .ok()?;
            Some((written, n))
        })
        .max()
        .map(|(_, n)| n);
    newest.map_or_else(|| store.join("binpkgs"), |n| gens.join(n))
}

/// PKGDIR of run `id`: the generation it wrote, named after it.
pub fn run_pkgdir(store: &Path, id: &str) -> PathBuf {
    store.join("binpkgs/generations").join(id)
}
