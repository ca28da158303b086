//! `cargo bench --bench slurm`: the overhead per job of going through Slurm
//! (`portroot run --scheduler slurm`: sbatch, one array task per job, each
//! task a `portroot run-task` pinning and running its one job, the queue
//! polled) against a local run of the same jobs (`--scheduler local`),
//! measured one after the other on the same store, on the one-node cluster
//! of [`portroot::fixture::slurm::SlurmCluster`]. Every job runs `true`, so
//! what is measured is the cost around a job, not the job.
//!
//! `PORTROOT_BENCH_NS=1,8` picks the job counts (default 1, 8, 16). Best of
//! three per figure: the machine is shared, and the minimum is the figure
//! least disturbed by other load.
//!
//! Needs root. Prints figures and ratios; asserts nothing.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portroot::fixture::slurm::SlurmCluster;
use portroot::fixture::stage::{Compression, StageTarball};

const BIN: &str = env!("CARGO_BIN_EXE_portroot");

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench slurm: skipped, needs root");
        return;
    }
    let ns: Vec<usize> = std::env::var("PORTROOT_BENCH_NS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("PORTROOT_BENCH_NS: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 8, 16]);
    let tmp = tempfile::tempdir().expect("a temp dir");
    let base = tmp.path();
    let cluster = SlurmCluster::start().expect("starting the one-node cluster");
    prepare(base, &cluster);
    println!(
        "{} CPUs; every job runs `true`; best of 3",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>4}  {:>10}  {:>10}  {:>12}  {:>14}  {:>14}  {:>8}",
        "N", "local s", "slurm s", "bare sbatch s", "local ms/job", "slurm ms/job", "ratio"
    );
    // Warm the page cache and both paths once.
    run(base, "local", 1);
    run(base, "slurm", 1);
    for n in ns {
        let best = |sched: &str| {
            (0..3)
                .map(|_| run(base, sched, n))
                .min()
                .expect("three runs")
        };
        let local = best("local");
        let slurm = best("slurm");
        let bare = (0..3)
            .map(|_| bare_array(&cluster, base, n))
            .min()
            .expect("three runs");
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        println!(
            "{n:>4}  {:>10.3}  {:>10.3}  {:>12.3}  {:>14.1}  {:>14.1}  {:>7.1}x",
            local.as_secs_f64(),
            slurm.as_secs_f64(),
            bare.as_secs_f64(),
            per(local),
            per(slurm),
            slurm.as_secs_f64() / local.as_secs_f64()
        );
    }
    drop(cluster);
}

/// A store with stage `bench` and a `gentoo` repository tagged `t1`, and a
/// config pointing `[slurm]` at the cluster.
fn prepare(base: &Path, cluster: &SlurmCluster) {
    let store = base.join("store");
    let tarball = StageTarball::build(base, Compression::None).expect("building the stage");
    ok(Command::new(BIN)
        .arg("--store")
        .arg(&store)
        .args(["-q", "stage", "add", "--name", "bench"])
        .arg(&tarball));
    let repo = git2::Repository::init_bare(store.join("repos/gentoo.git")).expect("git init");
    let blob = repo.blob(b"1787270400 t1\n").expect("a blob");
    let mut meta = repo.treebuilder(None).expect("a tree builder");
    meta.insert("timestamp.x", blob, 0o100644).expect("insert");
    let meta = meta.write().expect("write tree");
    let mut root = repo.treebuilder(None).expect("a tree builder");
    root.insert("metadata", meta, 0o040000).expect("insert");
    let tree = repo
        .find_tree(root.write().expect("write tree"))
        .expect("tree");
    let sig = git2::Signature::now("bench", "bench@example.invalid").expect("signature");
    let commit = repo
        .commit(Some("refs/heads/main"), &sig, &sig, "t1", &tree, &[])
        .expect("commit");
    let obj = repo.find_object(commit, None).expect("object");
    repo.tag_lightweight("t1", &obj, false).expect("tag");
    fs::create_dir_all(base.join("shared")).expect("shared dir");
    let conf = format!(
        "[slurm]\nshared_dir = \"{}\"\nbin_dir = \"{}\"\n",
        base.join("shared").display(),
        cluster.bin_dir().display()
    );
    fs::write(base.join("portroot.toml"), conf).expect("config");
}

/// One run of `n` jobs through `scheduler`; its wall time.
fn run(base: &Path, scheduler: &str, n: usize) -> Duration {
    let started = Instant::now();
    ok(Command::new(BIN)
        .arg("--store")
        .arg(base.join("store"))
        .arg("--config")
        .arg(base.join("portroot.toml"))
        .args(["-q", "run", "--stage", "bench", "--tag", "t1"])
        .args(["--scheduler", scheduler, "--jobs"])
        .arg(n.to_string())
        .arg("--repeat")
        .arg(n.to_string())
        .args(["--", "true"]));
    started.elapsed()
}

/// Slurm alone: an array of `n` tasks each running `true`, submitted and
/// polled every 20 ms until the queue holds no active task of it. What a
/// portroot run through Slurm costs beyond this is portroot's.
fn bare_array(cluster: &SlurmCluster, base: &Path, n: usize) -> Duration {
    let started = Instant::now();
    let out = cluster
        .client("sbatch")
        .arg("--parsable")
        .arg(format!("--array=0-{}", n - 1))
        .arg(format!("--output={}/bare-%a.out", base.display()))
        .args(["--wrap", "true"])
        .output()
        .expect("sbatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    loop {
        let q = cluster
            .client("squeue")
            .args(["-h", "-j", &id, "-o", "%T"])
            .output()
            .expect("squeue");
        let text = String::from_utf8_lossy(&q.stdout);
        if !text.lines().any(|l| !l.trim().is_empty()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "array {id} still queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok(c: &mut Command) {
    let out = c.output().expect("running portroot");
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
