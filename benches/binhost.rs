//! Binhost generations against copying the binhost, side by side.
//!
//! A published generation of `PORTROOT_BENCH_FILES` (default 5,000) package
//! files of 4-64 KiB in 100 category/package directories, plus a
//! `Packages` index. Each `PORTROOT_BENCH_RUNS` times (default 5), median
//! reported:
//!
//! * making a run's generation from `current` (`Binhost::create`: every
//!   directory made again, every file hard-linked, the record written,
//!   renamed into place), by [`LINK_THREADS`] threads and by one (as
//!   before the linking was parallel), against `cp -a` of the same
//!   directory (what a generation made by copying costs);
//! * publishing it (`Binhost::publish`: syncfs, the link swapped by
//!   rename, fsync of the directory, the records written);
//! * and, as the floor for any tree of hard links, GNU `cp -al` of the
//!   same directory.
//!
//! `PORTROOT_BENCH_THREADS` sets the parallel side's threads. Timings are
//! printed, never asserted. `cargo bench --bench binhost`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portroot_runner::binhost::{Binhost, LINK_THREADS};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Fill generation `dir` with `files` package files and an index; returns
/// bytes written.
fn fill(dir: &Path, files: usize) -> u64 {
    let mut bytes = 0u64;
    let mut index = String::from("ARCH: amd64\nVERSION: 0\n\n");
    for i in 0..files {
        let (cat, pn) = (format!("cat-{}", i % 100), format!("pkg{i}"));
        let d = dir.join(&cat).join(&pn);
        std::fs::create_dir_all(&d).expect("creating a package directory");
        let len = 4096 + (i * 7919) % (60 << 10);
        let body: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
        std::fs::write(d.join(format!("{pn}-1-1.gpkg.tar")), &body).expect("writing a package");
        bytes += len as u64;
        index.push_str(&format!(
            "BUILD_ID: 1\nCPV: {cat}/{pn}-1\nPATH: {cat}/{pn}/{pn}-1-1.gpkg.tar\nSIZE: {len}\n\n"
        ));
    }
    std::fs::write(dir.join("Packages"), index).expect("writing the index");
    bytes
}

fn main() {
    let files = env_or("PORTROOT_BENCH_FILES", 5000);
    let runs = env_or("PORTROOT_BENCH_RUNS", 5).max(1);
    // On the disk, not tmpfs: where a store lives.
    let tmp =
        tempfile::tempdir_in(std::env::var("PORTROOT_BENCH_DIR").unwrap_or("/var/tmp".into()))
            .expect("a scratch directory");
    // PORTROOT_BENCH_THREADS: the parallel side's thread count.
    let threads = env_or("PORTROOT_BENCH_THREADS", LINK_THREADS).max(1);
    let host = Binhost::new(tmp.path().join("binpkgs")).with_threads(threads);
    host.create("base", None).expect("the first generation");
    let bytes = fill(&host.path("base"), files);
    host.publish("base")
        .expect("publishing the first generation");
    println!(
        "binhost: {files} package files, {:.1} MB, in {}",
        bytes as f64 / 1e6,
        tmp.path().display()
    );
    let serial = host.clone().with_threads(1);
    let (mut make, mut make1, mut publish, mut copy, mut links) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // One thread first, from the same `current`, then collected: the
        // parallel one is made last and published.
        let one = format!("s{i}");
        let _ = Command::new("sync").status();
        let t = Instant::now();
        serial.create(&one, None).expect("making a generation");
        make1.push(t.elapsed());
        let _ = std::fs::remove_dir_all(host.path(&one));
        let _ = std::fs::remove_file(host.path(&one).with_extension("json"));
        let _ = Command::new("sync").status();
        let id = format!("g{i}");
        let t = Instant::now();
        host.create(&id, Some(&id)).expect("making a generation");
        make.push(t.elapsed());
        let t = Instant::now();
        host.publish(&id).expect("publishing");
        publish.push(t.elapsed());
        // The baseline: the same directory copied, after a sync so neither
        // pays for the other's writeback.
        let _ = Command::new("sync").status();
        let dest = tmp.path().join(format!("copy-{i}"));
        for (flags, times) in [("-a", &mut copy), ("-al", &mut links)] {
            let t = Instant::now();
            let ok = Command::new("cp")
                .arg(flags)
                .arg(host.path(&id))
                .arg(&dest)
                .status()
                .is_ok_and(|s| s.success());
            times.push(t.elapsed());
            assert!(ok, "cp {flags} failed");
            let _ = std::fs::remove_dir_all(&dest);
            let _ = Command::new("sync").status();
        }
    }
    let (make, make1, publish) = (median(make), median(make1), median(publish));
    let (copy, links) = (median(copy), median(links));
    println!("median of {runs}:");
    println!("  make a generation, {threads} threads    {:>10}", ms(make));
    println!("  make a generation, 1 thread     {:>10}", ms(make1));
    println!(
        "  {threads} threads / 1 thread {:.3}x",
        make.as_secs_f64() / make1.as_secs_f64()
    );
    println!("  publish it (swap current)        {:>10}", ms(publish));
    println!("  cp -a of the same directory      {:>10}", ms(copy));
    println!("  cp -al of the same directory     {:>10}", ms(links));
    println!(
        "  make / cp -a {:.3}x, (make + publish) / cp -a {:.3}x",
        make.as_secs_f64() / copy.as_secs_f64(),
        (make + publish).as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "  make / cp -al {:.3}x",
        make.as_secs_f64() / links.as_secs_f64()
    );
}
