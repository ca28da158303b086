//! Layers and stage export against the obvious manual ways, side by side.
//!
//! The tree is `PORTROOT_BENCH_FILES` (default 5,000) text-like files of
//! 0.6-16 KiB in 100 directories, some owned by portage, some with a `user.*`
//! xattr and a hardlink, as a job's upper directory after `emerge` looks.
//! Compared, each `PORTROOT_BENCH_RUNS` times (default 3), median reported:
//!
//! * keeping a job's upper directory: `layer create`'s commit (rename into the
//!   store, strip the runner's files, count, write layer.json, rename into
//!   place) against `cp -a UPPER DEST` (what keeping a copy costs);
//! * export: `export_tree` (PAX tar, xz preset 6 on all cores) against GNU
//!   `tar --numeric-owner --xattrs --xattrs-include='*' -cf - | xz -6 -T0`
//!   and against `tar -cJf` (xz's default single thread), run once each.
//!
//! Run as root: `cargo bench --bench layer`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portroot_runner::conf::ChrootConf;
use portroot_runner::layer::{LayerStore, Provenance, RunnerWrites};
use portroot_runner::stage::export::export_tree;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic, text-like content of `len` bytes.
fn content(seed: usize, len: usize) -> Vec<u8> {
    let words = [
        "ebuild", "inherit", "econf", "DEPEND", "amd64", "SLOT", "IUSE", "emake", "DESTDIR", "\n",
        "#", "\t", "die", "lib64", "usr", "share",
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

/// Write the bench tree at `root`; returns bytes of file data.
fn make_tree(root: &Path, files: usize) -> usize {
    let dirs = 100;
    let mut bytes = 0;
    for i in 0..files {
        let dir = root.join(format!("usr/lib64/bench/d{:03}", i * dirs / files));
        if i * dirs % files == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let len = match i % 10 {
            0 => 16 * 1024,
            1..=3 => 4 * 1024,
            _ => 600 + (i * 37) % 1500,
        };
        bytes += len;
        let path = dir.join(format!("f{i:06}"));
        std::fs::write(&path, content(i, len)).expect("write");
        if i % 7 == 0 {
            std::os::unix::fs::lchown(&path, Some(250), Some(250)).expect("chown");
        }
        if i % 11 == 0 {
            xattr::set(&path, "user.bench", b"x").expect("xattr");
        }
        if i % 97 == 0 {
            std::fs::hard_link(&path, dir.join(format!("h{i:06}"))).expect("link");
        }
    }
    bytes
}

fn sh(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("running sh");
    assert!(status.success(), "{script} failed");
}

fn main() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("layer bench: needs root (chown); skipped");
        return;
    }
    let files = env_or("PORTROOT_BENCH_FILES", 5_000);
    let runs = env_or("PORTROOT_BENCH_RUNS", 3).max(1);
    let work = tempfile::tempdir().expect("creating a temp dir");
    let w = work.path();
    let template = w.join("template");
    let bytes = make_tree(&template, files);
    println!(
        "layer bench: {files} files, {:.1} MB of file data, {runs} runs each",
        bytes as f64 / 1e6
    );

    // Keeping the upper directory: commit (a rename) against a copy.
    let lower = w.join("lower");
    std::fs::create_dir_all(&lower).expect("mkdir");
    let writes = RunnerWrites {
        conf: ChrootConf {
            repos: vec![],
            distdir: "/var/cache/distfiles".into(),
            pkgdir: "/var/cache/binpkgs".into(),
            local_mirror: None,
            resolv_conf: None,
            features: Vec::new(),
            make_conf_lines: Vec::new(),
        },
        resolv_conf: None,
        mount_targets: vec![PathBuf::from("/proc")],
    };
    let (mut commit, mut copy) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let upper = w.join(format!("upper-{run}"));
        sh(&format!(
            "cp -a '{}' '{}'",
            template.display(),
            upper.display()
        ));
        let store = LayerStore::new(w.join("layers"), w.join("tmp"));
        let t = Instant::now();
        let pending = store.begin(&format!("l{run}")).expect("begin");
        let prov = Provenance {
            stage: "bench".into(),
            stage_digest: portroot_runner::digest::StageDigest::parse(&"0".repeat(64)).unwrap(),
            parents: vec![],
            trees: vec![],
            command: "true".into(),
            exit_status: 0,
        };
        let layer = pending
            .commit(&upper, std::slice::from_ref(&lower), &writes, prov, &|| {
                false
            })
            .expect("commit");
        commit.push(t.elapsed());
        assert!(layer.record.files as usize >= files);

        let dest = w.join(format!("copy-{run}"));
        let t = Instant::now();
        sh(&format!(
            "cp -a '{}' '{}'",
            template.display(),
            dest.display()
        ));
        copy.push(t.elapsed());
        std::fs::remove_dir_all(&dest).expect("cleaning up");
    }
    let (commit, copy) = (median(commit), median(copy));
    println!(
        "  keep upper: cp -a             {:>8.3} s",
        copy.as_secs_f64()
    );
    println!(
        "  keep upper: layer commit      {:>8.3} s   {:.3}x of cp -a",
        commit.as_secs_f64(),
        commit.as_secs_f64() / copy.as_secs_f64()
    );

    // Export: once each, the tree warm in the page cache.
    let out = w.join("ours.tar.xz");
    let t = Instant::now();
    let stats = export_tree(&template, &out, &|_, _| {}).expect("export");
    let ours = t.elapsed();
    let tar_flags = "--numeric-owner --xattrs --xattrs-include='*'";
    let t = Instant::now();
    sh(&format!(
        "tar {tar_flags} -cf - -C '{}' . | xz -6 -T0 > '{}'",
        template.display(),
        w.join("mt.tar.xz").display()
    ));
    let mt = t.elapsed();
    let t = Instant::now();
    sh(&format!(
        "tar {tar_flags} -cJf '{}' -C '{}' .",
        w.join("st.tar.xz").display(),
        template.display()
    ));
    let st = t.elapsed();
    let size = |p: PathBuf| std::fs::metadata(p).expect("stat").len() as f64 / 1e6;
    println!(
        "  export: tar -cJf (xz -T1)     {:>8.3} s   {:.1} MB",
        st.as_secs_f64(),
        size(w.join("st.tar.xz"))
    );
    println!(
        "  export: tar | xz -6 -T0       {:>8.3} s   {:.1} MB",
        mt.as_secs_f64(),
        size(w.join("mt.tar.xz"))
    );
    println!(
        "  export: portroot export_tree  {:>8.3} s   {:.1} MB   {:.2}x of tar|xz -T0, {:.2}x of tar -cJf",
        ours.as_secs_f64(),
        stats.tarball_bytes as f64 / 1e6,
        ours.as_secs_f64() / mt.as_secs_f64(),
        ours.as_secs_f64() / st.as_secs_f64()
    );
}
