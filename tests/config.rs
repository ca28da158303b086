//! The configuration file through the real binary: where it is read from,
//! how a bad one is reported, and that its defaults reach import (keyring),
//! snapshot (repo), run (make.conf, layout, caches) and mount (cache size,
//! threads), with flags overriding each.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use portroot::fixture::portage::{pack_snapshot, PortageTree};
use portroot_runner::archive::Compression;

use crate::util;

/// A temp dir with a store in it and room for config files and tarballs.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("store")).unwrap();
        Env { tmp }
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn portroot(&self) -> Command {
        util::portroot(&self.store())
    }

    /// Write `text` as the store's config.toml.
    fn store_config(&self, text: &str) -> PathBuf {
        let path = self.store().join("config.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// Write `text` as a config file outside the store.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// Pack snapshot `tree` (with its .md5sum) and return the tarball.
    fn snapshot(&self, tree: &PortageTree) -> PathBuf {
        let dir = self
            .tmp
            .path()
            .join(format!("tree-{}", tree.snapshot_stem()));
        tree.write_tree(&dir).unwrap();
        pack_snapshot(
            &dir,
            &tree.snapshot_stem(),
            Compression::Gzip,
            &self.tmp.path().join("out"),
        )
        .unwrap()
    }

    /// Every file of the store, for "nothing changed" checks.
    fn store_listing(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() && !p.is_symlink() {
                    walk(&p, out);
                }
                out.push(p);
            }
        }
        let mut out = Vec::new();
        walk(&self.store(), &mut out);
        out.sort();
        out
    }
}

#[test]
fn show_merges_the_given_file_and_the_stores_key_by_key() {
    let env = Env::new();
    let site = env.file(
        "site.toml",
        "mirrors = [\"https://mirror.example.org/gentoo\"]\n[run]\njobs = 4\nnetwork = \"none\"\n",
    );
    let store_file = env.store_config("[run]\njobs = 2\n[mount]\ncache_size = \"1G\"\n");
    let out = util::ok(
        env.portroot()
            .arg("--config")
            .arg(&site)
            .args(["config", "show"]),
    );
    let site_s = site.display().to_string();
    let store_s = store_file.display().to_string();
    assert!(
        out.contains(&format!("#   {site_s}\n#   {store_s}\n")),
        "{out}"
    );
    for want in [
        format!("mirrors = [\"https://mirror.example.org/gentoo\"]  # {site_s}"),
        format!("jobs = 2  # {store_s}"),
        format!("network = \"none\"  # {site_s}"),
        format!("cache_size = 1073741824  # {store_s}"),
        "# layout: \"modern\" (default)".to_owned(),
        "# binpkgs: none, each run writes a generation of run.binhost (default)".to_owned(),
        format!(
            "# binhost: \"binpkgs\" ({}), none if run.binpkgs is set (default)",
            env.store().join("binpkgs").display()
        ),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    // The same through the environment variable.
    let out2 = util::ok(
        env.portroot()
            .env("PORTROOT_CONFIG", &site)
            .args(["config", "show"]),
    );
    assert_eq!(out, out2);
    // --no-config reads neither file, even with PORTROOT_CONFIG set.
    let out = util::ok(env.portroot().env("PORTROOT_CONFIG", &site).args([
        "--no-config",
        "config",
        "show",
    ]));
    assert!(
        out.starts_with("# no configuration file: built-in defaults\n"),
        "{out}"
    );
    assert!(!out.contains("jobs = "), "{out}");
}

#[test]
fn example_is_documented_and_parses() {
    let env = Env::new();
    let example = util::ok(env.portroot().args(["config", "example"]));
    assert!(example.contains("# keyring = "), "{example}");
    // Shipped commented out: used as is, it sets nothing.
    let path = env.file("example.toml", &example);
    let out = util::ok(
        env.portroot()
            .arg("--config")
            .arg(&path)
            .args(["config", "show"]),
    );
    assert!(!out.lines().any(|l| l.contains(" = ")), "{out}");
}

#[test]
fn bad_keys_types_and_values_name_the_file_and_line() {
    let env = Env::new();
    let tree = PortageTree::small(21);
    let file = env.snapshot(&tree);
    let cases = [
        ("repo = \"gentoo\"\nmirorrs = []\n", "2:1: unknown field `mirorrs`, expected one of `mirrors`, `keyring`, `repo`, `run`, `mount`, `slurm`"),
        ("[run]\nscheduler = \"pbs\"\n", "2:13: unknown variant `pbs`, expected `local` or `slurm`"),
        ("[slurm]\nshared_dir = \"runs\"\n", "2:14: path \"runs\" is not absolute"),
        ("[run]\njobs = \"many\"\n", "2:8: invalid type: string \"many\", expected an integer from 1 to 4096"),
        ("[mount]\n# the daemon's budget\ncache_size = \"2T\"\n", "3:14: bad size unit in \"2T\" (use K, M or G)"),
        ("[run]\nlayout = \"flat\"\n", "2:10: unknown variant `flat`, expected `modern` or `usr-portage`"),
        ("keyring = \"keys.gpg\"\n", "1:11: path \"keys.gpg\" is not absolute"),
    ];
    for (text, want) in cases {
        let path = env.store_config(text);
        let before = env.store_listing();
        let err = util::fails(env.portroot().args(["snapshot", "import"]).arg(&file), 2);
        assert_eq!(
            err,
            format!("portroot: {}:{want}\n", path.display()),
            "for {text:?}"
        );
        assert_eq!(env.store_listing(), before, "the store changed");
    }
    // The same check applies to a --config file.
    fs::remove_file(env.store().join("config.toml")).unwrap();
    let path = env.file("bad.toml", "[mount]\nthreads = 0\n");
    let err = util::fails(
        env.portroot()
            .arg("--config")
            .arg(&path)
            .args(["snapshot", "list"]),
        2,
    );
    assert_eq!(
        err,
        format!(
            "portroot: {}:2:11: threads must be 1 to 64, not 0\n",
            path.display()
        )
    );
    // --no-config gets past a broken store file (to inspect or fix a store).
    env.store_config("nonsense");
    util::ok(
        env.portroot()
            .args(["--no-config", "snapshot", "import"])
            .arg(&file),
    );
}

#[test]
fn missing_explicit_config_is_an_error_missing_default_is_not() {
    let env = Env::new();
    let missing = env.tmp.path().join("nope.toml");
    let err = util::fails(
        env.portroot()
            .arg("--config")
            .arg(&missing)
            .args(["stage", "list"]),
        2,
    );
    assert_eq!(
        err,
        format!(
            "portroot: {}: no such configuration file\n",
            missing.display()
        )
    );
    let err = util::fails(
        env.portroot()
            .env("PORTROOT_CONFIG", &missing)
            .args(["stage", "list"]),
        2,
    );
    assert!(err.contains("no such configuration file"), "{err}");
    // Unreadable: the reason follows the file's name, still on one line.
    let err = util::fails(
        env.portroot()
            .arg("--config")
            .arg(env.tmp.path())
            .args(["stage", "list"]),
        2,
    );
    assert!(
        err.starts_with(&format!(
            "portroot: {}: reading the configuration: ",
            env.tmp.path().display()
        )) && err.lines().count() == 1,
        "{err}"
    );
    // No store config.toml and (on a test machine) no site file: fine.
    util::ok(env.portroot().args(["stage", "list"]));
}

#[test]
fn store_config_repo_is_the_default_and_the_flag_overrides_it() {
    let env = Env::new();
    env.store_config("repo = \"other\"\n");
    let tree = PortageTree::small(21);
    let out = util::ok(
        env.portroot()
            .args(["snapshot", "import"])
            .arg(env.snapshot(&tree)),
    );
    assert!(out.starts_with("imported 2026-08-20"), "{out}");
    assert!(env.store().join("repos/other.git").is_dir());
    assert!(!env.store().join("repos/gentoo.git").exists());
    let out = util::ok(env.portroot().args(["snapshot", "list"]));
    assert!(out.starts_with("2026-08-20  "), "{out}");
    let err = util::fails(
        env.portroot()
            .args(["snapshot", "list", "--repo", "gentoo"]),
        1,
    );
    assert!(err.contains("gentoo"), "{err}");
}

#[test]
fn configured_keyring_requires_a_signature_on_import() {
    let env = Env::new();
    let gpg = util::Gpg::new();
    let keyring = env.tmp.path().join("gentoo-release.gpg");
    gpg.keyring(&keyring);
    env.store_config(&format!("keyring = \"{}\"\n", keyring.display()));

    let tree = PortageTree::small(21);
    let file = env.snapshot(&tree);
    let err = util::fails(env.portroot().args(["snapshot", "import"]).arg(&file), 1);
    assert!(err.contains("no signature file"), "{err}");
    assert!(!env
        .store()
        .join("repos/gentoo.git/refs/tags/2026-08-20")
        .exists());

    // --no-verify overrides the configured keyring (with its warning).
    let out = util::run(
        env.portroot()
            .args(["snapshot", "import", "--no-verify"])
            .arg(&file),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-verify"));

    // Signed, the next snapshot goes in with the configured keyring.
    let next = env.snapshot(&tree.next_day());
    gpg.sign(&next);
    let out = util::ok(env.portroot().args(["snapshot", "import"]).arg(&next));
    assert!(out.starts_with("imported 2026-08-21"), "{out}");
    // And a keyring given as a flag wins over the configured one: a keyring
    // without the signer's key refuses the same signature.
    let stranger = util::Gpg::new();
    let other = env.tmp.path().join("other.gpg");
    stranger.keyring(&other);
    let third = env.snapshot(&tree.next_day().next_day());
    gpg.sign(&third);
    let err = util::fails(
        env.portroot()
            .args(["snapshot", "import", "--keyring"])
            .arg(&other)
            .arg(&third),
        1,
    );
    assert!(err.contains("signature check of"), "{err}");
}

/// The make.conf the job saw, from its log.
fn job_log(store: &Path, job: &str) -> String {
    let runs: Vec<PathBuf> = fs::read_dir(store.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let log = fs::read_to_string(runs[0].join(job).join("log")).unwrap();
    fs::remove_dir_all(&runs[0]).unwrap();
    log
}

#[test]
fn run_takes_make_conf_layout_and_caches_from_config_and_flags_override() {
    if !util::require_root() {
        return;
    }
    let rs = crate::runner::RunStore::new();
    let store = rs.store();
    let binhost = rs.tmp.path().join("binhost");
    fs::write(
        store.join("config.toml"),
        format!(
            "[run]\nlayout = \"usr-portage\"\njobs = 2\nfeatures = [\"getbinpkg\", \"-ipc-sandbox\"]\n\
             make_conf_lines = ['MAKEOPTS=\"-j3\"', 'ACCEPT_LICENSE=\"*\"']\n\
             binpkgs = \"{}\"\nlocal_mirror = \"http://mirror.lan/gentoo\"\n",
            binhost.display()
        ),
    )
    .unwrap();
    let script = "cat /etc/portage/make.conf /etc/portage/mirrors; \
                  cat /usr/portage/metadata/timestamp.x; echo pkg > /var/cache/binpkgs/$(hostname).gpkg.tar";
    util::ok(
        util::portroot(&store)
            .args([
                "run",
                "--stage",
                "test",
                "--tag",
                "2026-08-20",
                "--repeat",
                "2",
                "--",
            ])
            .arg(script),
    );
    let log = job_log(&store, "1");
    assert!(
        log.contains(
            "FEATURES=\"${FEATURES} buildpkg cgroup ipc-sandbox network-sandbox parallel-fetch getbinpkg -ipc-sandbox\"\n"
        ),
        "{log}"
    );
    assert!(
        log.contains("PKGDIR=\"/var/cache/binpkgs\"\nMAKEOPTS=\"-j3\"\nACCEPT_LICENSE=\"*\"\n"),
        "{log}"
    );
    assert!(log.starts_with("\n# added by portroot\n"), "{log}");
    assert!(log.contains("local http://mirror.lan/gentoo\n"), "{log}");
    assert!(log.contains("1787270400 2026-08-20\n"), "{log}");
    // The packages landed in the configured binhost, not the store's.
    let mut pkgs: Vec<_> = fs::read_dir(&binhost)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pkgs.sort();
    assert_eq!(pkgs.len(), 2, "{pkgs:?}");
    assert!(
        fs::read_dir(store.join("binpkgs")).map_or(true, |mut d| d.next().is_none()),
        "a package went to the store's binpkgs"
    );

    // Flags win over every one of those keys.
    let own = rs.tmp.path().join("own-binpkgs");
    util::ok(
        util::portroot(&store)
            .args(["run", "--stage", "test", "--tag", "2026-08-20", "--layout", "modern"])
            .args(["--features", "-buildpkg", "--make-conf", "USE=\"-X\""])
            .arg("--binpkgs")
            .arg(&own)
            .args(["--local-mirror", "http://other.lan/g", "--"])
            .arg(
                "cat /etc/portage/make.conf /etc/portage/mirrors /var/db/repos/gentoo/metadata/timestamp.x; \
                 echo pkg > /var/cache/binpkgs/mine.gpkg.tar",
            ),
    );
    let log = job_log(&store, "1");
    assert!(
        log.contains("parallel-fetch -buildpkg\"\n") && !log.contains("getbinpkg"),
        "{log}"
    );
    assert!(
        log.contains("PKGDIR=\"/var/cache/binpkgs\"\nUSE=\"-X\"\n") && !log.contains("MAKEOPTS"),
        "{log}"
    );
    assert!(
        log.contains("local http://other.lan/g\n") && !log.contains("mirror.lan"),
        "{log}"
    );
    assert!(log.contains("1787270400 2026-08-20\n"), "{log}");
    assert!(own.join("mine.gpkg.tar").is_file());
    assert!(!binhost.join("mine.gpkg.tar").exists());
    util::assert_no_mounts_under(rs.tmp.path());
}

#[test]
fn run_refuses_a_bad_features_flag_before_touching_the_store() {
    let env = Env::new();
    let before = env.store_listing();
    let err = util::fails(
        env.portroot().args([
            "run",
            "--stage",
            "s",
            "--tag",
            "t",
            "--features",
            "ok \"quoted\"",
            "--",
            "true",
        ]),
        1,
    );
    assert!(err.contains("--features: bad FEATURES word"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.store_listing(), before);
}

/// The command line of the `portroot mount` daemon serving `mountpoint`.
fn daemon_args(mountpoint: &Path) -> Option<Vec<String>> {
    let want = mountpoint.to_string_lossy().into_owned();
    for e in fs::read_dir("/proc").unwrap() {
        let Ok(cmdline) = fs::read(e.unwrap().path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .strip_suffix(b"\0")
            .unwrap_or(&cmdline)
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--foreground") && args.last() == Some(&want) {
            return Some(args);
        }
    }
    None
}

#[test]
fn mount_takes_cache_size_threads_and_io_uring_from_config_and_flags_override() {
    if !util::require_root() {
        return;
    }
    let env = Env::new();
    let tree = PortageTree::small(21);
    util::ok(
        env.portroot()
            .args(["snapshot", "import"])
            .arg(env.snapshot(&tree)),
    );
    env.store_config("[mount]\ncache_size = \"3M\"\nthreads = 3\nio_uring = \"off\"\n");
    let mnt = env.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    let check = |extra: &[&str], size: &str, threads: &str, io_uring: &str| {
        util::ok(
            env.portroot()
                .args(["mount", "--tag", "2026-08-20"])
                .args(extra)
                .arg(&mnt),
        );
        let args = daemon_args(&mnt);
        // Unmount before asserting, so a failure leaves no mount behind.
        util::ok(env.portroot().arg("umount").arg(&mnt));
        let args = args.expect("the mount daemon's command line");
        let pos = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(pos("--cache-size").as_deref(), Some(size), "{args:?}");
        assert_eq!(pos("--threads").as_deref(), Some(threads), "{args:?}");
        assert_eq!(pos("--io-uring").as_deref(), Some(io_uring), "{args:?}");
        assert!(args.iter().any(|a| a == "--no-config"), "{args:?}");
    };
    check(&[], "3145728", "3", "off");
    check(
        &["--cache-size", "1M", "--threads", "1", "--io-uring", "auto"],
        "1048576",
        "1",
        "auto",
    );
    util::assert_no_mounts_under(env.tmp.path());
}

#[test]
fn shell_serves_the_configured_repo_in_the_configured_layout() {
    if !util::require_root() {
        return;
    }
    let rs = crate::runner::RunStore::new();
    let store = rs.store();
    // The store's `extra` repository (branch main) as the gentoo tree.
    fs::write(
        store.join("config.toml"),
        "repo = \"extra\"\n[run]\nlayout = \"usr-portage\"\nnetwork = \"none\"\n",
    )
    .unwrap();
    let mut shell = util::portroot(&store);
    shell
        .args(["shell", "--stage", "test", "--tag", "main"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = shell.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cat /usr/portage/profiles/repo_name; wc -l < /proc/net/dev\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // Two header lines and loopback: no other device without the network.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "extra\n3\n");
    util::assert_no_mounts_under(rs.tmp.path());
}
