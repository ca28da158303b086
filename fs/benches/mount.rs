//! Benchmark of the git-tree filesystem on a portage-shaped tree of ~106k files.
//!
//! Run with `cargo bench -p portroot-fs` (as root, for FUSE and drop_caches).
//! Prints, in one run and against baselines measured in the same run:
//! * the CPU time libgit2 takes to inflate every blob once (what the choice
//!   of zlib build changes);
//! * mount latency for a 1,000-file and a 106k-file tag;
//! * stat+read of every file right after a fresh mount with the page cache
//!   dropped, vs `git archive TAG | tar -x` (the checkout it replaces),
//!   through /dev/fuse and through io_uring, walking in listing order (as
//!   find, tar or rsync do) and, through io_uring, in an order the
//!   prefetcher does not guess;
//! * the same warm, vs the extracted files on the local disk, warm;
//! * the daemon's peak RSS (VmHWM), with the default and with a small budget;
//!   with the small budget, the anonymous and file-backed (mapped pack) parts
//!   after the walk and what the daemon gives back once the kernel forgets
//!   the inodes it held (bytes per held inode);
//! * the load average at start and end: other work on the box moves the cold
//!   figure a lot (every READ is a cross-CPU wakeup).
//!
//! The repository is generated once with `git fast-import`, then repacked the
//! way the snapshot importer writes its packs (whole objects, no deltas, zlib
//! level 1), and kept under the target dir. The checkout baseline is taken
//! twice, into two fresh directories, and the faster counts: on ext4 without a
//! journal, inode allocation crawls past inodes freed in the last minute or
//! five (`recently_deleted`), so a checkout right after an earlier run's
//! cleanup can take twice as long and would flatter the mount. The mount runs in a
//! child process (this binary re-executed with `PORTROOT_BENCH_SERVE`), so its
//! peak RSS is the daemon's alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CATEGORIES: usize = 160;
const PACKAGES: usize = 110;
const SMALL_FILES: usize = 1000;

/// A tiny deterministic generator (xorshift) for reproducible content.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn word(&mut self) -> &'static str {
        const WORDS: &[&str] = &[
            "src_compile",
            "econf",
            "emake",
            "DEPEND",
            "RDEPEND",
            "IUSE",
            "KEYWORDS",
            "amd64",
            "~arm64",
            "x86",
            "dev-libs/openssl",
            "sys-libs/zlib",
            "inherit",
            "cmake",
            "python-r1",
            "LICENSE=\"GPL-2\"",
            "SLOT=\"0\"",
            "use",
            "doc",
            "test",
            "||",
            "die",
            "einfo",
            "local",
            "if",
            "then",
            "fi",
            "EAPI=8",
            "SRC_URI",
            "https://example.org/dist/",
            ".tar.gz",
            "default",
            "src_install",
            "dodoc",
        ];
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }
    fn text(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            out.extend_from_slice(self.word().as_bytes());
            out.push(if self.next() % 9 == 0 { b'\n' } else { b' ' });
        }
        out
    }
}

/// (path, content, exec) for every file of the big tree.
fn big_tree() -> Vec<(String, Vec<u8>, bool)> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut files = Vec::new();
    for c in 0..CATEGORIES {
        let cat = format!("cat-{c:03}");
        files.push((format!("{cat}/metadata.xml"), rng.text(400), false));
        for p in 0..PACKAGES {
            let pkg = format!("{cat}/pkg-{p:03}");
            for v in 0..2 {
                let ebuild = format!("pkg-{p:03}-{v}.{}.ebuild", rng.next() % 20);
                let len = 600 + (rng.next() % 2400) as usize;
                files.push((format!("{pkg}/{ebuild}"), rng.text(len), false));
                let cache = format!("metadata/md5-cache/{cat}/pkg-{p:03}-{v}");
                files.push((cache, rng.text(700), false));
            }
            files.push((format!("{pkg}/Manifest"), rng.text(300), false));
            files.push((format!("{pkg}/metadata.xml"), rng.text(500), false));
            if p % 10 == 0 {
                files.push((
                    format!("{pkg}/files/fix-build.patch"),
                    rng.text(3000),
                    false,
                ));
                files.push((format!("{pkg}/files/init.sh"), rng.text(200), true));
            }
        }
    }
    files
}

/// Build (once) a bare repo with tags `small` (1,000 files) and `big`.
fn repo(dir: &Path) -> PathBuf {
    // Named for its pack format; an earlier, delta-compressed one goes.
    let _ = std::fs::remove_dir_all(dir.join("repo.git"));
    let git_dir = dir.join("repo-whole-objects.git");
    if git_dir.join("packed-refs").exists() {
        return git_dir;
    }
    let _ = std::fs::remove_dir_all(&git_dir);
    let started = Instant::now();
    let ok = Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&git_dir)
        .status()
        .expect("git init");
    assert!(ok.success());
    let files = big_tree();
    let mut fi = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    {
        let mut w = std::io::BufWriter::new(fi.stdin.take().expect("stdin"));
        let commit = |w: &mut dyn Write,
                      branch: &str,
                      mark: u32,
                      time: i64,
                      set: &[(String, Vec<u8>, bool)]| {
            writeln!(w, "commit refs/heads/{branch}\nmark :{mark}").expect("write");
            writeln!(
                w,
                "committer bench <b@example.invalid> {time} +0000\ndata 5\nbench"
            )
            .expect("write");
            writeln!(w, "deleteall").expect("write");
            for (path, data, exec) in set {
                let mode = if *exec { "100755" } else { "100644" };
                writeln!(w, "M {mode} inline {path}\ndata {}", data.len()).expect("write");
                w.write_all(data).expect("write");
                writeln!(w).expect("write");
            }
            writeln!(w, "reset refs/tags/{branch}\nfrom :{mark}\n").expect("write");
        };
        commit(&mut w, "small", 1, 1787270400, &files[..SMALL_FILES]);
        commit(&mut w, "big", 2, 1787356800, &files);
        w.flush().expect("flush");
    }
    assert!(fi.wait().expect("wait").success(), "fast-import failed");
    // fast-import deltifies each blob against the one before it; the
    // importer's packs hold whole objects at level 1 (src/snapshot/pack.rs).
    let ok = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args([
            "-c",
            "pack.compression=1",
            "-c",
            "repack.writeBitmaps=false",
        ])
        .args(["repack", "-q", "-a", "-d", "-F", "--window=0", "--depth=0"])
        .status()
        .expect("git repack");
    assert!(ok.success(), "repack failed");
    let ok = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .args(["pack-refs", "--all"])
        .status()
        .expect("git pack-refs");
    assert!(ok.success(), "pack-refs failed");
    eprintln!(
        "built {} files into {} in {:.1}s",
        files.len(),
        git_dir.display(),
        started.elapsed().as_secs_f64()
    );
    git_dir
}

fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// stat + read every file under `root` in listing order, entering each
/// directory where it is listed, as find, tar, rsync and cp -r walk; returns
/// (files, bytes).
fn walk(root: &Path) -> (u64, u64) {
    let mut read = Reader::default();
    let mut dirs = vec![std::fs::read_dir(root).expect("read_dir")];
    while let Some(dir) = dirs.last_mut() {
        let Some(e) = dir.next() else {
            dirs.pop();
            continue;
        };
        let path = e.expect("entry").path();
        if read.visit(&path) {
            dirs.push(std::fs::read_dir(&path).expect("read_dir"));
        }
    }
    (read.files, read.bytes)
}

/// The same, but every directory's subdirectories are walked after its
/// files, last one first (a plain stack): an order the prefetcher's look-
/// ahead does not guess.
fn walk_reversed(root: &Path) -> (u64, u64) {
    let mut read = Reader::default();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            if read.visit(&path) {
                stack.push(path);
            }
        }
    }
    (read.files, read.bytes)
}

/// lstat a path and read it whole if it is a file; says if it is a directory.
#[derive(Default)]
struct Reader {
    files: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl Reader {
    fn visit(&mut self, path: &Path) -> bool {
        let meta = std::fs::symlink_metadata(path).expect("lstat");
        if meta.is_file() {
            self.buf.clear();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut self.buf))
                .expect("read");
            self.files += 1;
            self.bytes += self.buf.len() as u64;
        }
        meta.is_dir()
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// A mount served by a child process (this binary, re-executed).
struct Server {
    child: std::process::Child,
    mount_time: Duration,
}

impl Server {
    fn start(git_dir: &Path, tag: &str, at: &Path, cache: u64) -> Server {
        Server::start_with(git_dir, tag, at, cache, false)
    }

    /// `uring`: serve through FUSE over io_uring.
    fn start_with(git_dir: &Path, tag: &str, at: &Path, cache: u64, uring: bool) -> Server {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(
                "PORTROOT_BENCH_SERVE",
                format!(
                    "{}\n{tag}\n{}\n{cache}\n{uring}",
                    git_dir.display(),
                    at.display()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let us: u64 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("server failed: {line:?}"));
        Server {
            child,
            mount_time: Duration::from_micros(us),
        }
    }

    /// A field of the daemon's /proc status, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        status_kib(&format!("/proc/{}/status", self.child.id()), field)
    }

    /// Unmount and return the daemon's peak RSS in KiB.
    fn stop(mut self) -> u64 {
        drop(self.child.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        self.child.wait().expect("wait");
        out.trim()
            .strip_prefix("hwm ")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// The child side: mount, say `ready <µs>`, wait for stdin EOF, unmount, say
/// `hwm <KiB>`.
fn serve(spec: &str) {
    let mut parts = spec.lines();
    let (git_dir, tag, at, cache) = (
        PathBuf::from(parts.next().expect("git dir")),
        parts.next().expect("tag").to_owned(),
        PathBuf::from(parts.next().expect("mountpoint")),
        parts.next().expect("cache").parse().expect("cache bytes"),
    );
    let uring = parts.next() == Some("true");
    let opts = portroot_fs::MountOptions {
        cache_bytes: cache,
        io_uring: if uring {
            portroot_fs::IoUring::On
        } else {
            portroot_fs::IoUring::Off
        },
        ..Default::default()
    };
    let (m, took) = timed(|| portroot_fs::mount(&git_dir, portroot_fs::View::Ref(tag), &at, &opts));
    let m = m.expect("mount");
    println!("ready {}", took.as_micros());
    std::io::stdout().flush().expect("flush");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    m.unmount().expect("unmount");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        .unwrap_or_default();
    println!("hwm {hwm}");
}

/// A `field:` of a /proc status file, in KiB (0 if missing).
fn status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// On a KVM guest with the haltpoll cpuidle driver: how long an idle vCPU
/// polls before it halts. Every /dev/fuse request and reply wakes a thread on
/// the other CPU; with polling off each wakeup is a halted vCPU's exit to the
/// host, which roughly doubles the cold /dev/fuse walk measured here.
fn halt_poll() -> Option<String> {
    let ns = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").ok()?;
    let ns = ns.trim();
    Some(if ns == "0" {
        "KVM guest halt polling is off (haltpoll guest_halt_poll_ns=0): each cross-CPU wakeup \
         exits to the host"
            .to_string()
    } else {
        format!("KVM guest halt polling: idle vCPUs poll up to {ns} ns before halting")
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon's live inode count, which it reports as statfs `f_files`.
fn inode_count(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs only writes into `st`.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_files
}

/// Read every blob of the repository through libgit2 once, on this thread,
/// and print the thread's CPU time: the cost of the inflate library alone
/// (the pack is mapped and hot, nothing else runs on the thread), which the
/// machine's load barely moves, unlike the walks' wall time.
fn inflate_every_blob(git_dir: &Path) {
    let repo = git2::Repository::open_bare(git_dir).expect("open repo");
    let odb = repo.odb().expect("odb");
    let mut blobs = Vec::new();
    odb.foreach(|oid| {
        blobs.push(*oid);
        true
    })
    .expect("list objects");
    // Best of three passes (the first also maps and warms the pack).
    let mut bytes = 0u64;
    let mut read = 0usize;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = thread_cpu_time();
        bytes = 0;
        read = 0;
        for oid in &blobs {
            let obj = odb.read(*oid).expect("read object");
            if obj.kind() == git2::ObjectType::Blob {
                bytes += obj.len() as u64;
                read += 1;
            }
        }
        best = best.min(thread_cpu_time() - start);
    }
    extern "C" {
        // zlib's own version string, from whichever zlib is linked: the one
        // libgit2 inflates with.
        fn zlibVersion() -> *const std::ffi::c_char;
    }
    // SAFETY: zlibVersion returns a static NUL-terminated string.
    let zlib = unsafe { std::ffi::CStr::from_ptr(zlibVersion()) };
    println!("zlib linked: {}", zlib.to_string_lossy());
    println!(
        "inflate every blob through libgit2 ({} blobs, {:.1} MiB): {:.0} ms of CPU \
         ({:.2} us per blob, {:.0} MiB/s), best of 3",
        read,
        bytes as f64 / (1 << 20) as f64,
        ms(best),
        best.as_secs_f64() * 1e6 / read.max(1) as f64,
        bytes as f64 / (1 << 20) as f64 / best.as_secs_f64()
    );
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    // SAFETY: timespec is plain data; all-zero is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if let Ok(spec) = std::env::var("PORTROOT_BENCH_SERVE") {
        serve(&spec);
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        println!("skipped: the fs benchmark needs root and /dev/fuse");
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portroot-fs-bench");
    std::fs::create_dir_all(&work).expect("bench dir");
    let git_dir = repo(&work);
    let scratch = tempfile::tempdir_in(&work).expect("scratch");
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let default_cache = portroot_fs::DEFAULT_CACHE_BYTES;

    let bench_start = Instant::now();
    println!(
        "portroot-fs benchmark (tree: {} categories x {} packages), load average {}",
        CATEGORIES,
        PACKAGES,
        loadavg()
    );

    inflate_every_blob(&git_dir);

    // Mount latency, median of 5, for both tag sizes.
    for tag in ["small", "big"] {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let s = Server::start(&git_dir, tag, &mnt, default_cache);
                let t = s.mount_time;
                s.stop();
                t
            })
            .collect();
        times.sort();
        println!(
            "mount latency, tag {tag:5}: {:7.2} ms (median of 5)",
            ms(times[2])
        );
    }

    // Baseline: the checkout. git archive | tar -x, caches dropped; twice,
    // the faster counts (see the top of the file).
    let mut dropped = true;
    let mut checkouts = Vec::new();
    for n in 0..2 {
        dropped &= drop_caches();
        let dir = scratch.path().join(format!("checkout{n}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let (_, t) = timed(|| {
            let sh = format!(
                "git --git-dir '{}' archive refs/tags/big | tar -x -C '{}'",
                git_dir.display(),
                dir.display()
            );
            assert!(Command::new("sh")
                .args(["-c", &sh])
                .status()
                .expect("sh")
                .success());
        });
        checkouts.push((t, dir));
    }
    let (checkout, disk) = checkouts
        .iter()
        .min_by_key(|(t, _)| *t)
        .cloned()
        .expect("two checkouts");

    // Cold read through a fresh mount.
    drop_caches();
    let server = Server::start(&git_dir, "big", &mnt, default_cache);
    let ((files, bytes), cold) = timed(|| walk(&mnt));
    let (_, warm_fuse) = timed(|| walk(&mnt));
    let (_, warm_fuse2) = timed(|| walk(&mnt));
    let inodes = inode_count(&mnt);
    let hwm = server.stop();

    // The same cold walk through FUSE over io_uring, where the kernel allows it.
    let cold_uring = portroot_fs::ring::kernel_allows().then(|| {
        drop_caches();
        let server = Server::start_with(&git_dir, "big", &mnt, default_cache, true);
        let (_, t) = timed(|| walk(&mnt));
        server.stop();
        drop_caches();
        let server = Server::start_with(&git_dir, "big", &mnt, default_cache, true);
        let (_, reversed) = timed(|| walk_reversed(&mnt));
        server.stop();
        (t, reversed)
    });

    // Warm local disk: the extracted checkout, walked once to warm it.
    walk(&disk);
    let (_, warm_disk) = timed(|| walk(&disk));
    let (_, warm_disk2) = timed(|| walk(&disk));
    let warm_fuse = warm_fuse.min(warm_fuse2);
    let warm_disk = warm_disk.min(warm_disk2);

    // Peak RSS with a small budget, reading everything cold; then what the
    // daemon gives back when the kernel forgets the inodes it held (dropping
    // the dentry and inode caches makes it send FORGET for each).
    drop_caches();
    let small_budget = 16 << 20;
    let server = Server::start(&git_dir, "big", &mnt, small_budget);
    walk(&mnt);
    let held = inode_count(&mnt);
    let anon_held = server.status_kib("RssAnon");
    let file_held = server.status_kib("RssFile");
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
    let mut released = inode_count(&mnt);
    for _ in 0..50 {
        // FORGETs are asynchronous; wait for the count to settle.
        std::thread::sleep(Duration::from_millis(100));
        let now = inode_count(&mnt);
        if now == released {
            break;
        }
        released = now;
    }
    let anon_released = server.status_kib("RssAnon");
    let hwm_small = server.stop();

    println!(
        "tree: {files} files, {:.1} MiB{}",
        bytes as f64 / (1 << 20) as f64,
        if dropped {
            ""
        } else {
            " (could not drop caches: cold figures are warm)"
        }
    );
    println!(
        "checkout (git archive | tar -x), caches dropped: {:.0} ms and {:.0} ms; the faster counts",
        ms(checkouts[0].0),
        ms(checkouts[1].0)
    );
    if let Some(poll) = halt_poll() {
        println!("{poll}");
    }
    println!(
        "cold stat+read, /dev/fuse:     {:8.0} ms   vs git archive | tar -x: {:8.0} ms   ratio {:.2}x (goal < 1)",
        ms(cold),
        ms(checkout),
        cold.as_secs_f64() / checkout.as_secs_f64()
    );
    match cold_uring {
        Some((t, reversed)) => {
            println!(
                "cold stat+read, io_uring:      {:8.0} ms   vs git archive | tar -x: {:8.0} ms   ratio {:.2}x (goal < 1)",
                ms(t),
                ms(checkout),
                t.as_secs_f64() / checkout.as_secs_f64()
            );
            println!(
                "  the same, subdirectories last and in reverse: {:8.0} ms   ratio {:.2}x",
                ms(reversed),
                reversed.as_secs_f64() / checkout.as_secs_f64()
            );
        }
        None => println!(
            "cold stat+read, io_uring: not measured ({} is not Y)",
            portroot_fs::ring::ENABLE_PARAM
        ),
    }
    println!(
        "warm stat+read, mount:         {:8.0} ms   vs same files on disk:   {:8.0} ms   ratio {:.2}x (goal <= 1.3)",
        ms(warm_fuse),
        ms(warm_disk),
        warm_fuse.as_secs_f64() / warm_disk.as_secs_f64()
    );
    println!(
        "daemon peak RSS: {:.1} MiB with the default 256 MiB budget, {:.1} MiB with a 16 MiB budget \
         ({inodes} inodes held by the kernel after the walk)",
        hwm as f64 / 1024.0,
        hwm_small as f64 / 1024.0
    );
    let freed = held.saturating_sub(released);
    println!(
        "16 MiB budget after the walk: {:.1} MiB anonymous + {:.1} MiB file-backed (the mapped pack) \
         with {held} inodes held; {:.1} MiB anonymous once the kernel forgot {freed} of them \
         ({:.0} bytes per held inode given back)",
        anon_held as f64 / 1024.0,
        file_held as f64 / 1024.0,
        anon_released as f64 / 1024.0,
        (anon_held.saturating_sub(anon_released) * 1024) as f64 / freed.max(1) as f64
    );
    println!(
        "load average at the end {}; whole benchmark {:.0} s",
        loadavg(),
        bench_start.elapsed().as_secs_f64()
    );
}
