//! `cargo bench --bench import`: importing a Gentoo-sized snapshot, against the
//! seed's manual way and against bare decompression, measured in the same run.
//!
//! Builds a ~100k-file portage tree with the library fixture (cached under
//! `target/bench-import/` between runs, as is its `.tar.xz`), then times, each
//! as a child process with its peak RSS from `wait4`:
//!
//! * `xz -dc FILE > /dev/null`: the floor, decompression alone;
//! * `portroot snapshot import FILE` into a fresh store (md5 verified);
//! * the next day's snapshot into that store (only changed objects written);
//! * the seed's way: `tar -xJf` + `git init` + `git add -A -f` + `git commit`
//!   + `git tag` in a fresh directory;
//!
//! and prints the ratios the issue sets as goals (import <= 1.5x xz, <= 0.5x
//! the seed's way, peak RSS < 256 MB).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portroot::fixture::portage::{pack_snapshot, PortageTree};
use portroot_runner::archive::Compression;

/// Wall time, CPU time (user + system) and peak RSS (bytes) of a child process.
struct Run {
    wall: Duration,
    cpu: Duration,
    max_rss: u64,
}

fn timed(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; status and usage are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status}"
    );
    std::mem::forget(child);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Run {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss: usage.ru_maxrss as u64 * 1024,
    }
}

fn quiet(mut c: Command) -> Command {
    c.stdout(Stdio::null()).stderr(Stdio::inherit());
    c
}

/// The cached tarballs for day 0 and day 1 of the benchmark tree.
fn snapshots(cache: &Path) -> (PathBuf, PathBuf, u64) {
    let tree = PortageTree::gentoo_scale(1);
    let dir = cache.join(format!(
        "{}x{}-v{}",
        tree.categories, tree.packages_per_category, tree.max_versions
    ));
    let done = dir.join("complete");
    let day0 = dir.join(format!("{}.tar.xz", tree.snapshot_stem()));
    let day1 = dir.join(format!("{}.tar.xz", tree.next_day().snapshot_stem()));
    if !done.exists() && std::env::var_os(BUILD_ENV).is_none() {
        // Build in a child process: a child's peak RSS as wait4 reports it
        // starts at its parent's (the fork copies the parent's memory before
        // exec), so the measuring process must stay small.
        let me = std::env::current_exe().unwrap();
        timed(Command::new(me).env(BUILD_ENV, "1"));
    } else if !done.exists() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (t, name) in [(tree.clone(), "day0"), (tree.next_day(), "day1")] {
            let start = Instant::now();
            let tdir = dir.join(name);
            let stats = t.write_tree(&tdir).unwrap();
            let file = pack_snapshot(&tdir, &t.snapshot_stem(), Compression::Xz, &dir).unwrap();
            fs::remove_dir_all(&tdir).unwrap();
            fs::write(dir.join(format!("{name}.files")), stats.files.to_string()).unwrap();
            eprintln!(
                "built {} ({} files, {:.1} MB of content) in {:.0} s",
                file.display(),
                stats.files,
                stats.bytes as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
        }
        fs::write(&done, "").unwrap();
    }
    let files = fs::read_to_string(dir.join("day0.files"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (day0, day1, files)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Set in the child that builds the cached snapshots.
const BUILD_ENV: &str = "PORTROOT_BENCH_BUILD_SNAPSHOTS";

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-import");
    fs::create_dir_all(&root).unwrap();
    let (day0, day1, files) = snapshots(&root);
    if std::env::var_os(BUILD_ENV).is_some() {
        return;
    }
    let work = tempfile::tempdir_in(&root).unwrap();
    let size = fs::metadata(&day0).unwrap().len();
    println!(
        "snapshot: {} ({files} files, {:.1} MB xz)",
        day0.display(),
        size as f64 / 1e6
    );

    // Decompression alone (twice: the first run also warms the page cache).
    let xz = || {
        let mut c = quiet(Command::new("xz"));
        c.arg("-dc").arg(&day0);
        timed(&mut c)
    };
    let _ = xz();
    let xz = xz();

    let portroot = env!("CARGO_BIN_EXE_portroot");
    let import = |store: &Path, file: &Path| {
        let mut c = quiet(Command::new(portroot));
        c.env_remove("RUST_LOG")
            .arg("--store")
            .arg(store)
            .arg("--quiet");
        c.args(["snapshot", "import"]).arg(file);
        timed(&mut c)
    };
    let mut best: Option<Run> = None;
    for i in 0..2 {
        let store = work.path().join(format!("store{i}"));
        let run = import(&store, &day0);
        if best.as_ref().is_none_or(|b| run.wall < b.wall) {
            best = Some(run);
        }
    }
    let ours = best.expect("two runs");
    let next = import(&work.path().join("store0"), &day1);

    // The seed's way.
    let seed = work.path().join("seed");
    fs::create_dir_all(&seed).unwrap();
    let start = Instant::now();
    let tar = timed(
        Command::new("tar")
            .arg("-xJf")
            .arg(&day0)
            .arg("-C")
            .arg(&seed),
    );
    let top = fs::read_dir(&seed).unwrap().next().unwrap().unwrap().path();
    let git = |args: &[&str]| {
        let mut c = quiet(Command::new("git"));
        c.arg("-C")
            .arg(&top)
            .args(["-c", "user.name=seed", "-c", "user.email=seed@localhost"])
            .args(args);
        timed(&mut c)
    };
    git(&["init", "-q"]);
    let add = git(&["add", "-A", "-f"]);
    let commit = git(&["commit", "-q", "-m", "Update portage tree to 2026-08-20"]);
    git(&["tag", "-a", "-m", "Tagging 2026-08-20", "2026-08-20"]);
    let seed_total = start.elapsed();

    println!();
    println!(
        "{:<46} {:>8} {:>8} {:>10}",
        "what", "wall s", "cpu s", "peak RSS"
    );
    let row = |what: &str, r: &Run| {
        println!(
            "{what:<46} {:>8.2} {:>8.2} {:>7.0} MB",
            secs(r.wall),
            secs(r.cpu),
            r.max_rss as f64 / 1e6
        );
    };
    row("xz -dc > /dev/null", &xz);
    row("portroot snapshot import (fresh store)", &ours);
    row("portroot snapshot import (next day)", &next);
    row("seed: tar -xJf", &tar);
    row("seed: git add -A -f", &add);
    row("seed: git commit", &commit);
    println!(
        "{:<46} {:>8.2}",
        "seed: total (tar + init + add + commit + tag)",
        secs(seed_total)
    );
    println!();
    let vs_xz = secs(ours.wall) / secs(xz.wall);
    let vs_seed = secs(ours.wall) / secs(seed_total);
    println!("import / xz -dc      = {vs_xz:.2}x   (goal <= 1.5x)");
    println!(
        "  cpu: import / xz   = {:.2}x   (over two threads; wall is the goal, cpu shows the load-independent cost)",
        secs(ours.cpu) / secs(xz.cpu)
    );
    println!("import / seed's way  = {vs_seed:.2}x   (goal <= 0.5x)");
    println!(
        "import peak RSS      = {:.0} MB  (goal < 256 MB)",
        ours.max_rss as f64 / 1e6
    );
}
