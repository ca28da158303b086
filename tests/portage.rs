//! Real portage in portroot's chroots: the library's Gentoo fixture (a
//! Debian minbase with portage's source release, and a small real ebuild
//! repository whose metadata portage's own egencache wrote) imported and
//! added through the CLI, then `emerge` run through `portroot run` under
//! the seed's FEATURES.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use portroot::fixture::gentoo::{self, GentooFixture, PORTAGE_ID};

use crate::util;

/// The fixture, or `None` after printing why it cannot be had (a failure
/// under `PORTROOT_TEST_MUST_RUN=1`).
pub(crate) fn fixture() -> Option<&'static GentooFixture> {
    if !util::require_root() {
        return None;
    }
    let started = Instant::now();
    match gentoo::fixture() {
        Ok(f) => {
            eprintln!(
                "gentoo fixture ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Some(f)
        }
        Err(e) if std::env::var_os("PORTROOT_TEST_MUST_RUN").is_some_and(|v| v == "1") => {
            panic!("PORTROOT_TEST_MUST_RUN=1 but the gentoo fixture cannot be had: {e}")
        }
        Err(e) => {
            eprintln!("skipped: the gentoo fixture cannot be had: {e}");
            None
        }
    }
}

/// A store with the fixture's snapshot imported and its stage added as
/// `gentoo`.
pub(crate) struct PortageStore {
    pub(crate) tmp: tempfile::TempDir,
    tag: String,
}

impl PortageStore {
    pub(crate) fn new(f: &GentooFixture) -> PortageStore {
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let s = PortageStore {
            tmp,
            tag: f.repo.tag.clone(),
        };
        let out = util::ok(
            util::portroot(&s.store())
                .args(["-q", "snapshot", "import", "--no-verify"])
                .arg(&f.repo.tarball),
        );
        assert!(out.contains(&s.tag), "{out}");
        util::ok(
            util::portroot(&s.store())
                .args(["-q", "stage", "add", "--name", "gentoo"])
                .arg(&f.stage.tarball),
        );
        eprintln!(
            "snapshot imported and stage added in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        s
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    /// `portroot -q run --stage gentoo --tag TAG` plus `args`.
    pub(crate) fn run(&self, args: &[&str]) -> Command {
        let mut c = util::portroot(&self.store());
        c.args(["-q", "run", "--stage", "gentoo", "--tag", &self.tag])
            .args(args);
        c
    }

    /// `run` with `mirror` as GENTOO_MIRRORS, the one job running `script`.
    pub(crate) fn emerge(&self, mirror: &Mirror, script: &str) -> Command {
        self.run(&["--make-conf", &mirror.gentoo_mirrors(), "--", script])
    }

    /// The logs of every job of the newest run, by job name.
    pub(crate) fn logs(&self) -> BTreeMap<String, String> {
        let runs = self.store().join("runs");
        let newest = fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .expect("a run directory");
        fs::read_dir(&newest)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("log").is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read_to_string(p.join("log")).unwrap())
            })
            .collect()
    }
}

/// Run, and on failure show the jobs' logs too (that is where emerge's
/// error is).
pub(crate) fn ok_with_logs(s: &PortageStore, mut cmd: Command) -> Output {
    let started = Instant::now();
    let out = util::run(&mut cmd);
    eprintln!(
        "{:?}: {:.1} s",
        cmd.get_args().last().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        let logs: Vec<String> = s
            .logs()
            .into_iter()
            .map(|(job, log)| format!("--- job {job}:\n{}", tail(&log, 60)))
            .collect();
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            logs.join("\n")
        );
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback HTTP mirror serving the files below one directory by their
/// path, or else by their base name whatever directory the request names
/// (`GENTOO_MIRRORS` asks for `/distfiles/NAME`, a `local` mirror for
/// `/NAME`). Records every request line. Stops when dropped.
pub(crate) struct Mirror {
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    pub(crate) fn serve(dir: &Path) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (dir, reqs, halt) = (dir.to_owned(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = answer(conn, &dir, &reqs);
                }
            }
        });
        Mirror {
            url: format!("http://{addr}"),
            requests,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    /// The make.conf line that points portage at this mirror.
    fn gentoo_mirrors(&self) -> String {
        format!("GENTOO_MIRRORS=\"{}\"", self.url)
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, dir: &Path, requests: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    requests.lock().unwrap().push(line.trim().to_owned());
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    // The path below `dir` if it names a file there (a binhost's
    // `Packages`, `CATEGORY/PN/*.gpkg.tar`), else the base name alone; never
    // a `..` or hidden component.
    let rel = path.trim_start_matches('/');
    let safe =
        |p: &str| !p.is_empty() && p.split('/').all(|c| !c.is_empty() && !c.starts_with('.'));
    let name = rel.rsplit('/').next().unwrap_or("");
    let file = [rel, name]
        .into_iter()
        .filter(|p| safe(p))
        .find_map(|p| fs::read(dir.join(p)).ok());
    let mut conn = conn;
    match file {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method != "HEAD" {
                conn.write_all(&body)?;
            }
        }
        None => write!(
            conn,
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    conn.flush()
}

/// PKGDIR's `Packages` index: the `CPV` and `PATH` of each package entry.
pub(crate) fn packages_index(pkgdir: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(pkgdir.join("Packages")).unwrap();
    text.split("\n\n")
        .skip(1) // the header
        .filter(|stanza| !stanza.trim().is_empty())
        .map(|stanza| {
            let field = |key: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                    .unwrap_or_else(|| panic!("no {key} in {stanza}"))
            };
            (field("CPV:"), field("PATH:"))
        })
        .collect()
}

/// Every `*.gpkg.tar` below `pkgdir`, relative to it.
fn gpkg_files(pkgdir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![pkgdir.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".gpkg.tar") {
                out.push(
                    p.strip_prefix(pkgdir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// The index lists every binary package on disk exactly once and nothing
/// else; returns the CPVs it lists, sorted.
fn assert_index_consistent(pkgdir: &Path) -> Vec<String> {
    let index = packages_index(pkgdir);
    let mut paths: Vec<String> = index.iter().map(|(_, p)| p.clone()).collect();
    paths.sort();
    let mut unique = paths.clone();
    unique.dedup();
    assert_eq!(paths, unique, "a package listed twice: {index:?}");
    assert_eq!(paths, gpkg_files(pkgdir), "index and PKGDIR differ");
    let mut cpvs: Vec<String> = index.into_iter().map(|(c, _)| c).collect();
    cpvs.sort();
    cpvs
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn emerge_buildpkg_writes_gpkgs_listed_once_in_packages() {
    let Some(f) = fixture() else { return };
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    ok_with_logs(&s, s.emerge(&mirror, "emerge --buildpkg app-fixture/app"));
    let log = &s.logs()["1"];
    assert_eq!(
        log.matches(">>> Creating binpkg").count(),
        f.repo.cpvs.len(),
        "{log}"
    );
    // PKGDIR was the run's binhost generation.
    let pkgdir = util::pkgdir(&s.store());
    assert_eq!(
        assert_index_consistent(&pkgdir),
        sorted(f.repo.cpvs.clone())
    );
    for cpv in &f.repo.cpvs {
        let listed = packages_index(&pkgdir)
            .into_iter()
            .filter(|(c, _)| c == cpv)
            .count();
        assert_eq!(listed, 1, "{cpv} listed {listed} times");
    }
    // The seed's FEATURES, as `portroot run` writes them, reached portage:
    // the index records the FEATURES the packages were built with.
    let index = fs::read_to_string(pkgdir.join("Packages")).unwrap();
    let features: Vec<&str> = index
        .lines()
        .find_map(|l| l.strip_prefix("FEATURES: "))
        .unwrap_or_else(|| panic!("no FEATURES in {index}"))
        .split_whitespace()
        .collect();
    for word in portroot_runner::conf::FEATURES.split_whitespace() {
        assert!(features.contains(&word), "{word} not in {features:?}");
    }
}

#[test]
fn emerge_usepkgonly_installs_without_building() {
    let Some(f) = fixture() else { return };
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    ok_with_logs(&s, s.emerge(&mirror, "emerge --buildpkg app-fixture/app"));
    let fetched = mirror.requests().len();
    // Published, the packages are what the next run's generation starts from.
    let built = util::pkgdir(&s.store());
    let built = built.file_name().unwrap().to_string_lossy().into_owned();
    util::ok(util::portroot(&s.store()).args(["binhost", "publish", &built]));
    // A later run, in a fresh chroot: from PKGDIR only, nothing fetched.
    ok_with_logs(
        &s,
        s.emerge(
            &mirror,
            "emerge --usepkgonly app-fixture/app && fixture-app && cat /usr/share/fixture/app",
        ),
    );
    let log = &s.logs()["1"];
    assert_eq!(
        log.matches(">>> Emerging binary (").count(),
        f.repo.cpvs.len(),
        "{log}"
    );
    for cpv in &f.repo.cpvs {
        assert!(log.contains(cpv), "{cpv}: {log}");
    }
    for phase in [
        ">>> Unpacking source",
        ">>> Compiling source",
        ">>> Install app-fixture",
    ] {
        assert!(!log.contains(phase), "{phase}: {log}");
    }
    assert!(log.contains("lib over app-fixture/base-1\n"), "{log}");
    assert!(log.contains("app-fixture/app-1\n"), "{log}");
    assert_eq!(mirror.requests().len(), fetched, "{:?}", mirror.requests());
}

#[test]
fn four_parallel_jobs_leave_a_consistent_packages_index() {
    let Some(f) = fixture() else { return };
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    let mirrors = mirror.gentoo_mirrors();
    let jobs = s.tmp.path().join("jobs");
    fs::write(
        &jobs,
        "base\temerge --buildpkg app-fixture/base\n\
         lib\temerge --buildpkg app-fixture/lib\n\
         app\temerge --buildpkg app-fixture/app\n\
         app-again\temerge --buildpkg --oneshot app-fixture/app\n",
    )
    .unwrap();
    let jobs = jobs.to_string_lossy().into_owned();
    ok_with_logs(
        &s,
        s.run(&["--make-conf", &mirrors, "--jobs", "4", "--job-file", &jobs]),
    );
    let pkgdir = util::pkgdir(&s.store());
    let cpvs = assert_index_consistent(&pkgdir);
    // base is built by all four jobs, lib by three, app by two: each build
    // is its own instance (binpkg-multi-instance), each listed once.
    let count = |cpv: &str| cpvs.iter().filter(|c| *c == cpv).count();
    assert_eq!(
        (
            count("app-fixture/base-1"),
            count("app-fixture/lib-1"),
            count("app-fixture/app-1")
        ),
        (4, 3, 2),
        "{cpvs:?}"
    );
    // The shared DISTDIR holds the one distfile, whole.
    let fetched = fs::read(s.store().join("distfiles/app-1.tar.gz")).unwrap();
    assert_eq!(
        fetched,
        fs::read(f.repo.distfiles.join("app-1.tar.gz")).unwrap()
    );
}

#[test]
fn emerge_fetches_the_distfile_from_the_local_mirror_as_portage() {
    let Some(f) = fixture() else { return };
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    // `local` in /etc/portage/mirrors is tried first, before GENTOO_MIRRORS
    // (none here) and SRC_URI's own host (which does not resolve).
    ok_with_logs(
        &s,
        s.run(&[
            "--local-mirror",
            &mirror.url,
            "--make-conf",
            "GENTOO_MIRRORS=\"\"",
            "--",
            "stat -c 'distdir %u:%g %a' /var/cache/distfiles && emerge --fetchonly app-fixture/app",
        ]),
    );
    let requests = mirror.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET ") && r.contains("/app-1.tar.gz")),
        "{requests:?}"
    );
    let distfiles = s.store().join("distfiles");
    let file = distfiles.join("app-1.tar.gz");
    assert_eq!(
        fs::read(&file).unwrap(),
        fs::read(f.repo.distfiles.join("app-1.tar.gz")).unwrap()
    );
    // userfetch: the portage user fetched it, into a directory that is
    // Gentoo's root:portage 2775.
    let md = fs::metadata(&file).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (PORTAGE_ID, PORTAGE_ID),
        "{}",
        s.logs()["1"]
    );
    // Before portage ran, portroot had made it so.
    let log = &s.logs()["1"];
    assert!(log.starts_with("distdir 0:250 2775\n"), "{log}");
    let dir = fs::metadata(&distfiles).unwrap();
    assert_eq!(
        (dir.uid(), dir.gid(), dir.mode() & 0o7777),
        (0, PORTAGE_ID, 0o2775)
    );
}

#[test]
fn emerge_world_prints_no_warning_on_the_runners_output() {
    let Some(f) = fixture() else { return };
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    let mirrors = mirror.gentoo_mirrors();
    // Without -q, and with -v: info and above show on stderr.
    let mut cmd = util::portroot(&s.store());
    cmd.args([
        "-v",
        "run",
        "--stage",
        "gentoo",
        "--tag",
        &s.tag,
        "--make-conf",
        &mirrors,
        "--",
    ])
    .arg("emerge --buildpkg app-fixture/app && emerge --buildpkg -e @world");
    let out = ok_with_logs(&s, cmd);
    // Info lines (run started, finished) and nothing above them: no FUSE
    // request the daemon could not answer (ioctl is ENOTTY, quietly), no
    // unmount trouble.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}\nall of stderr:\n{stderr}");
    // Nor did portage itself warn about the chroot portroot made.
    let log = &s.logs()["1"];
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("!!!")).collect();
    assert!(warned.is_empty(), "{warned:?}");
    assert_eq!(
        log.matches(">>> Emerging (").count(),
        2 * f.repo.cpvs.len(),
        "{log}"
    );
}

/// Each job runs emerge in the background and, while it runs, looks for
/// the group portage's `FEATURES=cgroup` makes for it (`emerge-<pid>`) in
/// the job's own `/sys/fs/cgroup`; then waits for emerge.
const EMERGE_IN_ITS_CGROUP: &str = "emerge --buildpkg --oneshot app-fixture/app & e=$!; seen=; \
     while kill -0 $e 2>/dev/null; do \
     [ -n \"$(find /sys/fs/cgroup -maxdepth 3 -name 'emerge-*' 2>/dev/null)\" ] && seen=1; \
     sleep 0.05; \
     done; wait $e; rc=$?; [ -n \"$seen\" ] && echo portage-cgroup-seen; exit $rc";

#[test]
fn overlapping_emerges_with_features_cgroup_all_build_on_cgroup2_and_v1() {
    let Some(f) = fixture() else { return };
    // portroot's make.conf FEATURES carry `cgroup` (the seed's). Before jobs
    // had cgroups of their own, every job's emerge was PID 2 of its PID
    // namespace and used the host's one `portage/emerge-2`: the first to
    // finish removed it and killed the others.
    let s = PortageStore::new(f);
    let mirror = Mirror::serve(&f.repo.distfiles);
    let mirrors = mirror.gentoo_mirrors();
    let jobs = s.tmp.path().join("jobs");
    fs::write(
        &jobs,
        (1..=3)
            .map(|i| format!("j{i}\t{EMERGE_IN_ITS_CGROUP}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let jobs = jobs.to_string_lossy().into_owned();
    let args = ["--make-conf", &mirrors, "--jobs", "3", "--job-file", &jobs];
    // The machine as it is (v1 or hybrid on this kind of host): all build.
    ok_with_logs(&s, s.run(&args));
    // A cgroup2 at /sys/fs/cgroup, as on every current systemd host: portage
    // makes its groups in each job's own tree, and all three build.
    if crate::cgroup::have_cgroup2() {
        let mut cmd = s.run(&args);
        crate::cgroup::on_v2(&mut cmd);
        ok_with_logs(&s, cmd);
        for (job, log) in s.logs() {
            assert!(log.contains("portage-cgroup-seen"), "job {job}: {log}");
        }
    }
}
