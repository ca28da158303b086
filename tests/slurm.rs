//! `portroot run --scheduler slurm` against a real one-node Slurm cluster
//! (munged, slurmctld and slurmd from Debian's packages, unpacked in the
//! fixture cache and started per test on loopback by
//! [`portroot::fixture::slurm::SlurmCluster`]). The submitter's store is the
//! runner tests' [`RunStore`]; the node's store is either the same or a
//! second one holding the trees but not the stage.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portroot::fixture::slurm::{SlurmCluster, NODE};
use portroot::run::remote::{self, RemoteSpec};

use crate::runner::RunStore;
use crate::util;

/// Start a cluster, or fail loudly under `PORTROOT_TEST_MUST_RUN=1`.
fn cluster() -> Option<SlurmCluster> {
    if !util::require_root() {
        return None;
    }
    Some(SlurmCluster::start().expect("starting the one-node slurm cluster"))
}

/// A submitter's store, a shared run directory and a config pointing
/// `[slurm]` at the cluster.
struct Setup {
    rs: RunStore,
    cluster: SlurmCluster,
}

impl Setup {
    fn new(cluster: SlurmCluster, node_store: Option<&str>) -> Setup {
        Setup::build(cluster, node_store, true)
    }

    /// With `copy_repos` false the node's store starts empty and the config
    /// names the submitter's gentoo repository as the team remote.
    fn build(cluster: SlurmCluster, node_store: Option<&str>, copy_repos: bool) -> Setup {
        let rs = RunStore::new();
        let base = rs.tmp.path();
        fs::create_dir_all(base.join("shared")).unwrap();
        let mut node = String::new();
        if let Some(sub) = node_store {
            let dir = base.join(sub);
            fs::create_dir_all(&dir).unwrap();
            node = format!("store = \"{}\"\n", dir.display());
            if copy_repos {
                util::ok(
                    Command::new("cp")
                        .arg("-a")
                        .arg(rs.store().join("repos"))
                        .arg(&dir),
                );
            } else {
                let remote = rs.store().join("repos/gentoo.git");
                node.push_str(&format!("tree_remote = \"{}\"\n", remote.display()));
            }
        }
        let conf = format!(
            "[slurm]\nshared_dir = \"{}\"\nbin_dir = \"{}\"\n{node}",
            base.join("shared").display(),
            cluster.bin_dir().display()
        );
        fs::write(base.join("portroot.toml"), conf).unwrap();
        Setup { rs, cluster }
    }

    fn shared(&self) -> PathBuf {
        self.rs.tmp.path().join("shared")
    }

    fn node_store(&self, sub: &str) -> PathBuf {
        self.rs.tmp.path().join(sub)
    }

    /// `portroot run --scheduler slurm` with the config.
    fn run(&self) -> Command {
        let mut c = util::portroot(&self.rs.store());
        c.arg("--config")
            .arg(self.rs.tmp.path().join("portroot.toml"))
            .args(["run", "--scheduler", "slurm"]);
        c
    }

    /// The stage tarball the store was filled from, and its sha256.
    fn tarball(&self) -> (PathBuf, String) {
        let tar = fs::read_dir(self.rs.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(".tar"))
            .expect("the stage tarball");
        let rootfs = self.rs.rootfs();
        let digest = rootfs.parent().unwrap().file_name().unwrap();
        (tar, digest.to_string_lossy().into_owned())
    }

    /// The only run in the shared directory after `n` runs, newest last.
    fn runs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.shared())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Nothing of ours queued, mounted or running any more.
    fn assert_clean(self) {
        assert_eq!(
            self.cluster.queue().unwrap().trim(),
            "",
            "jobs left in the queue"
        );
        util::assert_no_mounts_under(self.rs.tmp.path());
        let dir = self.cluster.dir().to_owned();
        drop(self.cluster);
        assert!(!dir.exists(), "cluster dir left: {}", dir.display());
        let left = util::processes_mentioning(&dir.to_string_lossy());
        assert!(left.is_empty(), "daemons left: {left:?}");
    }
}

fn results(run: &Path) -> Vec<remote::TaskResult> {
    let spec = RemoteSpec::load(run).unwrap();
    (0..spec.jobs.len())
        .map(|i| {
            remote::load_result(run, i)
                .unwrap_or_else(|| panic!("no result {i} in {}", run.display()))
        })
        .collect()
}

#[test]
fn slurm_cluster_starts_and_stops_clean() {
    let Some(c) = cluster() else { return };
    let dir = c.dir().to_owned();
    let out = util::ok(c.client("sinfo").args(["-h", "-o", "%N %T"]));
    assert_eq!(out.trim(), format!("{NODE} idle"));
    drop(c);
    assert!(!dir.exists(), "cluster dir left: {}", dir.display());
    let left = util::processes_mentioning(&dir.to_string_lossy());
    assert!(left.is_empty(), "daemons left: {left:?}");
}

#[test]
fn slurm_runs_an_eight_job_array_and_prints_each_node() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, None);
    let out = util::ok(
        s.run()
            .args([
                "--stage",
                "test",
                "--tag",
                "2026-08-20",
                "--repeat",
                "8",
                "--",
            ])
            .arg("cat /var/db/repos/gentoo/metadata/timestamp.x; echo job=$(hostname)"),
    );
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("JOB") && lines[0].contains("NODE"),
        "{out}"
    );
    for i in 1..=8 {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{i} ")))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(row.contains(" ok ") && row.contains(NODE), "{row}");
    }
    let runs = s.runs();
    assert_eq!(runs.len(), 1);
    for (i, r) in results(&runs[0]).iter().enumerate() {
        assert_eq!(r.node, NODE);
        assert!(r.fetched.is_empty(), "{r:?}");
        let log = fs::read_to_string(&r.outcome.log).unwrap();
        assert!(
            log.contains(&format!("1787270400 2026-08-20\njob={}\n", i + 1)),
            "{log}"
        );
    }
    s.assert_clean();
}

#[test]
fn slurm_node_without_the_stage_fetches_it_once_and_a_second_run_reuses_it() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, Some("node"));
    let (tar, digest) = s.tarball();
    let url = format!("file://{}", tar.display());
    let run = |s: &Setup| {
        util::ok(
            s.run()
                .args(["--stage", "test", "--tag", "2026-08-20", "--repeat", "4"])
                .args(["--stage-url", &url, "--", "echo ran"]),
        )
    };
    run(&s);
    let first = results(&s.runs()[0]);
    let fetches: Vec<_> = first.iter().flat_map(|r| r.fetched.clone()).collect();
    assert_eq!(
        fetches,
        [format!("stage {digest}")],
        "one task fetches, the others wait and reuse"
    );
    assert!(s
        .node_store("node")
        .join("stages")
        .join(&digest)
        .join("rootfs")
        .is_dir());
    run(&s);
    let second = results(&s.runs()[1]);
    assert!(
        second
            .iter()
            .all(|r| r.fetched.is_empty() && r.outcome.status.success()),
        "{second:?}"
    );
    s.assert_clean();
}

#[test]
fn slurm_wrong_digest_fails_the_jobs_with_one_line_and_leaves_nothing() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, Some("node"));
    // Bytes that are not the pinned stage behind the URL.
    let wrong = s.rs.tmp.path().join("wrong.tar");
    fs::write(&wrong, b"not the stage").unwrap();
    let out = util::run(
        s.run()
            .args(["--stage", "test", "--tag", "2026-08-20", "--repeat", "2"])
            .arg("--stage-url")
            .arg(format!("file://{}", wrong.display()))
            .args(["--", "echo ran"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("2 of 2 jobs failed"), "{stderr}");
    for r in results(&s.runs()[0]) {
        let reason = r.reason.clone().expect("a reason");
        assert!(
            !reason.contains('\n') && reason.contains("sha256"),
            "{reason}"
        );
        let log = fs::read_to_string(&r.outcome.log).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(stdout.contains("error: fetching stage"), "{stdout}");
    }
    let stages = s.node_store("node").join("stages");
    let kept: Vec<_> = fs::read_dir(&stages)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        kept.iter()
            .all(|n| n.to_string_lossy().starts_with('.') || n == "lock"),
        "{kept:?}"
    );
    s.assert_clean();
}

#[test]
fn slurm_retry_failed_reruns_only_the_failed_jobs() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, None);
    let jobs = s.rs.tmp.path().join("jobs");
    fs::write(&jobs, "good\techo fine\nbad\ttest -e /tmp/never\n").unwrap();
    let out = util::run(
        s.run()
            .args(["--stage", "test", "--tag", "2026-08-20", "--job-file"])
            .arg(&jobs),
    );
    assert_eq!(out.status.code(), Some(1));
    let first = s.runs()[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = util::run(s.run().args(["--retry-failed", &first]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("bad ")), "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("good ")), "{stdout}");
    let retry = RemoteSpec::load(&s.runs()[1]).unwrap();
    assert_eq!(retry.retry_of.as_deref(), Some(first.as_str()));
    assert_eq!(retry.stage, RemoteSpec::load(&s.runs()[0]).unwrap().stage);
    s.assert_clean();
}

#[test]
fn slurm_sigint_cancels_the_array_and_leaves_nothing_queued() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, None);
    let mut child = s
        .run()
        .args([
            "--stage",
            "test",
            "--tag",
            "2026-08-20",
            "--repeat",
            "3",
            "--",
            "sleep 600",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while s.cluster.queue().unwrap().matches("RUNNING").count() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "tasks never ran: {}",
            s.cluster.queue().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "submitter still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    s.assert_clean();
}

#[test]
fn slurm_without_a_shared_dir_or_a_local_stage_url_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let err = util::fails(
        util::portroot(&store).arg("--no-config").args([
            "run",
            "--scheduler",
            "slurm",
            "--stage",
            "s",
            "--tag",
            "t",
            "--",
            "true",
        ]),
        2,
    );
    assert!(err.contains("slurm.shared_dir is not set"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = util::fails(
        util::portroot(&store).arg("--no-config").args([
            "run",
            "--stage",
            "s",
            "--tag",
            "t",
            "--stage-url",
            "file:///x",
            "--",
            "true",
        ]),
        2,
    );
    assert!(
        err.contains("--stage-url is for --scheduler slurm"),
        "{err}"
    );
    let conf = tmp.path().join("portroot.toml");
    fs::write(&conf, "[slurm]\nshared_dir = \"/nonexistent\"\n").unwrap();
    let err = util::fails(
        util::portroot(&store)
            .arg("--config")
            .arg(&conf)
            .args(["run", "--scheduler", "slurm", "--keep"])
            .args(["--stage", "s", "--tag", "t", "--", "true"]),
        2,
    );
    assert!(err.contains("--keep is for local runs"), "{err}");
}

#[test]
fn slurm_empty_node_store_fetches_the_tree_from_the_team_remote_once() {
    let Some(c) = cluster() else { return };
    let s = Setup::build(c, Some("node"), false);
    let (tar, digest) = s.tarball();
    util::ok(
        s.run()
            .args(["--stage", "test", "--tag", "2026-08-20", "--repeat", "3"])
            .arg("--stage-url")
            .arg(format!("file://{}", tar.display()))
            .args(["--", "cat /var/db/repos/gentoo/metadata/timestamp.x"]),
    );
    let spec = RemoteSpec::load(&s.runs()[0]).unwrap();
    let commit = &spec.trees[0].commit;
    let rs = results(&s.runs()[0]);
    let mut fetches: Vec<_> = rs.iter().flat_map(|r| r.fetched.clone()).collect();
    fetches.sort();
    assert_eq!(
        fetches,
        [format!("stage {digest}"), format!("tree {commit}")]
    );
    for r in &rs {
        let log = fs::read_to_string(&r.outcome.log).unwrap();
        assert!(log.contains("1787270400 2026-08-20"), "{log}");
    }
    s.assert_clean();
}

#[test]
fn slurm_task_over_its_time_limit_shows_as_killed_by_slurm() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, None);
    // `[slurm]` is the config's last section: one more key for it. One
    // minute is Slurm's smallest limit; it checks limits every 30 s or so.
    let conf = s.rs.tmp.path().join("portroot.toml");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("sbatch_options = [\"--time=1\"]\n");
    fs::write(&conf, text).unwrap();
    let out =
        util::run(
            s.run()
                .args(["--stage", "test", "--tag", "2026-08-20", "--", "sleep 600"]),
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("1 ")).unwrap_or("");
    assert!(
        row.contains("error: killed by slurm: timeout") && row.contains(NODE),
        "{stdout}"
    );
    s.assert_clean();
}

#[test]
fn slurm_node_without_the_layers_adds_them_by_digest_parents_first() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, Some("node"));
    let store = s.rs.store();
    let create = |name: &str, over: &[&str], script: &str| {
        let mut cmd = util::portroot(&store);
        cmd.args([
            "layer",
            "create",
            name,
            "--stage",
            "test",
            "--tag",
            "2026-08-20",
        ]);
        for l in over {
            cmd.args(["--layer", l]);
        }
        util::ok(cmd.arg("--").arg(script));
    };
    create("base", &[], "rm /var/lib/portage/world");
    create("top", &["base"], "echo from-top > /etc/top");
    let mut urls = Vec::new();
    for name in ["base", "top"] {
        let file = s.shared().join(format!("{name}.layer.tar.xz"));
        util::ok(
            util::portroot(&store)
                .args(["-q", "layer", "export", name, "-o"])
                .arg(&file),
        );
        urls.push(format!("{name}=file://{}", file.display()));
    }
    let (tar, _) = s.tarball();
    let stage_url = format!("file://{}", tar.display());
    let base_args = |c: &mut Command| {
        c.args([
            "--stage",
            "test",
            "--tag",
            "2026-08-20",
            "--stage-url",
            &stage_url,
        ])
        .args(["--layer", "base", "--layer", "top"]);
    };
    // A URL for a layer the run does not use: a usage error, nothing submitted.
    let mut bad = s.run();
    base_args(&mut bad);
    let err = util::fails(
        bad.args(["--layer-url", "nope=file:///x.tar.xz", "--", "true"]),
        2,
    );
    assert!(err.contains("the run uses no layer nope"), "{err}");
    let mut good = s.run();
    base_args(&mut good);
    for u in &urls {
        good.args(["--layer-url", u]);
    }
    util::ok(good.args([
        "--repeat",
        "2",
        "--",
        "cat /etc/top && test ! -e /var/lib/portage/world",
    ]));
    let runs = s.runs();
    let run = runs.iter().find(|p| p.is_dir()).expect("a run directory");
    let got = results(run);
    // Each layer once on the node, whichever task got there first.
    let mut layer_fetches: Vec<_> = got
        .iter()
        .flat_map(|r| r.fetched.clone())
        .filter(|f| f.starts_with("layer "))
        .map(|f| f.split(' ').nth(1).unwrap_or("").to_owned())
        .collect();
    layer_fetches.sort();
    assert_eq!(layer_fetches, ["base", "top"], "each once: {got:?}");
    for r in &got {
        assert!(r.outcome.status.success(), "{r:?}");
        let log = fs::read_to_string(&r.outcome.log).unwrap();
        assert!(log.contains("from-top"), "{log}");
    }
    for name in ["base", "top"] {
        let json =
            |root: &Path| fs::read(root.join("layers").join(name).join("layer.json")).unwrap();
        assert_eq!(json(&store), json(&s.node_store("node")));
    }
    // The submitting store lists the run, with the shared directory.
    let listed = util::ok(util::portroot(&store).arg("runs"));
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let row = listed.lines().find(|l| l.starts_with(&id)).unwrap_or("");
    assert!(
        row.contains("2/2") && row.contains("ok (slurm ") && row.contains(&*run.to_string_lossy()),
        "{listed}"
    );
    util::ok(util::portroot(&s.node_store("node")).args(["-q", "gc"]));
    s.assert_clean();
}

#[test]
fn slurm_max_wait_cancels_the_array_and_fails_in_one_line() {
    let Some(c) = cluster() else { return };
    let s = Setup::new(c, None);
    // `[slurm]` is the config's last section: one more key for it.
    let conf = s.rs.tmp.path().join("portroot.toml");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("max_wait = \"2s\"\n");
    fs::write(&conf, text).unwrap();
    let start = Instant::now();
    let err = util::fails(
        s.run()
            .args(["--stage", "test", "--tag", "2026-08-20", "--repeat", "2"])
            .args(["--", "sleep 600"]),
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not done within slurm.max_wait (2 s): cancelled"),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    s.assert_clean();
}
