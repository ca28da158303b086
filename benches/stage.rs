//! `stage add` against the seed's way of unpacking a stage, measured side by side.
//!
//! The stage is the fixture plus `PORTROOT_BENCH_FILES` (default 20,000) small
//! files in 200 directories, xz-compressed, as a real stage3 is. Compared:
//!
//! * seed: `tar --numeric-owner --xattrs --xattrs-include='*' -xpf STAGE -C DIR`
//!   (GNU tar, what `SEED-build-server.txt` runs, plus the flags that keep
//!   capabilities);
//! * portroot: `StageStore::add` into a fresh store (hash + unpack + rename);
//! * portroot re-add: the same file again (digest cache hit);
//! * floor: `xz -dc STAGE >/dev/null`, decompression alone.
//!
//! Each is run `PORTROOT_BENCH_RUNS` times (default 3), alternating, with the
//! page cache warm for the tarball; the median is reported. Run as root:
//! `cargo bench --bench stage`. `PORTROOT_BENCH_KEEP=FILE` also copies the
//! generated stage tarball to FILE, for profiling by hand.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portroot::fixture::stage::{self as fixture, Compression, Entry, Kind, StageTarball};
use portroot_runner::stage::StageStore;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic, text-like content of `len` bytes (compresses like source
/// files do, not like zeros).
fn content(seed: usize, len: usize) -> Vec<u8> {
    let words = [
        "ebuild",
        "inherit",
        "src_compile",
        "econf",
        "DEPEND",
        "KEYWORDS",
        "amd64",
        "~arm64",
        "SLOT",
        "0",
        "IUSE",
        "static-libs",
        "emake",
        "DESTDIR",
        "\n",
        "#",
        "\t",
        "die",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        out.push(if x & 0x30 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("stage bench: needs root (chown, mknod, security.* xattrs); skipped");
        return;
    }
    let files = env_or("PORTROOT_BENCH_FILES", 20_000);
    let runs = env_or("PORTROOT_BENCH_RUNS", 3).max(1);
    let work = tempfile::tempdir().expect("creating a temp dir");

    let start = Instant::now();
    let mut entries = StageTarball::entries().expect("reading the fixture's host files");
    let base_mtime = fixture::BASE_MTIME;
    let dirs = 200;
    for path in ["usr/share", "usr/share/bench"] {
        entries.push(Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: base_mtime,
            xattrs: Vec::new(),
        });
    }
    for d in 0..dirs {
        entries.push(Entry {
            path: format!("usr/share/bench/d{d:03}"),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: base_mtime,
            xattrs: Vec::new(),
        });
    }
    let mut bytes = 0;
    for i in 0..files {
        // Sizes like a portage tree or /usr/share: mostly small, a few larger.
        let len = match i % 10 {
            0 => 16 * 1024,
            1..=3 => 4 * 1024,
            _ => 600 + (i * 37) % 1500,
        };
        bytes += len;
        entries.push(Entry {
            // Grouped by directory, as tar of a real tree is.
            path: format!("usr/share/bench/d{:03}/f{i:06}", i * dirs / files),
            kind: Kind::File(content(i, len)),
            mode: 0o644,
            uid: if i % 7 == 0 { 250 } else { 0 },
            gid: 0,
            mtime: base_mtime + i as u64,
            xattrs: Vec::new(),
        });
    }
    let tarball = work.path().join("stage4-bench.tar.xz");
    fixture::write_tarball(&tarball, Compression::Xz, &entries).expect("writing the bench stage");
    if let Some(keep) = std::env::var_os("PORTROOT_BENCH_KEEP") {
        // For profiling by hand: `strace -c portroot stage add KEEP`.
        std::fs::copy(&tarball, &keep).expect("copying the bench stage out");
    }
    let size = std::fs::metadata(&tarball).expect("stat").len();
    println!(
        "stage bench: {} entries, {:.1} MB of file data, {:.1} MB xz (built in {:.1} s), {runs} runs each",
        entries.len(),
        bytes as f64 / 1e6,
        size as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("xz -dc '{}' >/dev/null", tarball.display()))
        .status()
        .expect("running xz");
    assert!(status.success(), "xz -dc failed");
    let floor = t.elapsed();

    let mut seed = Vec::new();
    let mut ours = Vec::new();
    let mut readd = Vec::new();
    for run in 0..runs {
        let dir = work.path().join(format!("tar-{run}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let t = Instant::now();
        let status = Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("running tar");
        seed.push(t.elapsed());
        assert!(status.success(), "tar failed");
        remove(&dir);

        let store = work.path().join(format!("store-{run}"));
        let stages = StageStore::new(store.join("stages"), store.join("tmp"));
        let t = Instant::now();
        let stage = stages.add(&tarball, None, &|_| {}).expect("stage add");
        ours.push(t.elapsed());
        assert_eq!(stage.files as usize, entries.len() - 1);
        let t = Instant::now();
        stages.add(&tarball, None, &|_| {}).expect("stage re-add");
        readd.push(t.elapsed());
        remove(&store);
    }
    let (seed, ours, readd) = (median(seed), median(ours), median(readd));
    println!(
        "  floor xz -dc >/dev/null      {:>8.3} s   (decompression alone)",
        floor.as_secs_f64()
    );
    println!(
        "  seed  tar -xpf (GNU tar)      {:>8.3} s",
        seed.as_secs_f64()
    );
    println!(
        "  portroot stage add           {:>8.3} s   {:.2}x of seed ({:.0} entries/s)",
        ours.as_secs_f64(),
        ours.as_secs_f64() / seed.as_secs_f64(),
        entries.len() as f64 / ours.as_secs_f64()
    );
    println!(
        "  portroot stage add, again    {:>8.3} ms  (digest cache hit; 1/{:.0} of seed)",
        readd.as_secs_f64() * 1e3,
        seed.as_secs_f64() / readd.as_secs_f64()
    );
}

fn remove(dir: &Path) {
    std::fs::remove_dir_all(dir).expect("cleaning up");
}
