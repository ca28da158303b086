//! Job cgroups as root, with real hierarchies: each job in a group of its
//! own under `portroot/<run>/<job>`, portage's `FEATURES=cgroup` working per
//! job, limits (an OOM kill stays in its job), accounting in the status
//! record and the table, nothing left behind, and the flags and config keys.
//!
//! Both kinds of host: the machine as it is (on the test VM a hybrid host:
//! controllers on v1, a v2 hierarchy without them), and a pure v2 view made
//! by mounting cgroup2 on `/sys/fs/cgroup` in a private mount namespace
//! around the run ([`on_v2`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::runner::RunStore;
use crate::util;

/// Run `cmd` in a private mount namespace where `/sys/fs/cgroup` is a
/// cgroup2 mount of the whole v2 hierarchy, as on a unified host (the v1
/// hierarchies mounted below the host's `/sys/fs/cgroup` are hidden).
pub(crate) fn on_v2(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only raw syscalls on static C strings:
    // nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(|| {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"cgroup2".as_ptr(),
                c"/sys/fs/cgroup".as_ptr(),
                c"cgroup2".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))
        })
    }
}

/// Whether the kernel has cgroup v2 (mounted anywhere, or mountable).
/// Poll `cond` every 20 ms; fail with `what` after 60 s.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn have_cgroup2() -> bool {
    let ok = fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("\tcgroup2\n"));
    if !ok {
        eprintln!("skipped: no cgroup2 in this kernel");
    }
    ok
}

/// The host's v1 hierarchy with `controller`, and this process's group in it.
fn v1_own(controller: &str) -> Option<PathBuf> {
    let line = fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == controller))
        })?
        .to_owned();
    let path = line
        .splitn(3, ':')
        .nth(2)?
        .trim_start_matches('/')
        .to_owned();
    let mount = fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .filter(|l| l.contains(" - cgroup "))
        .find(|l| {
            l.rsplit(' ')
                .next()
                .is_some_and(|o| o.split(',').any(|o| o == controller))
        })?
        .split(' ')
        .nth(4)?
        .to_owned();
    Some(Path::new(&mount).join(path))
}

/// Whether the test host has v1 memory, cpu and pids hierarchies; else the
/// v1 tests print `skipped` (a pure v2 host runs the v2 ones only).
pub(crate) fn have_v1() -> bool {
    let ok = ["memory", "cpu", "pids"]
        .iter()
        .all(|c| v1_own(c).is_some());
    if !ok {
        eprintln!("skipped: no v1 memory, cpu and pids hierarchies on this host");
    }
    ok
}

/// The single run of `store`: its directory and `run.json`.
fn the_run(store: &Path) -> (PathBuf, serde_json::Value) {
    let runs: Vec<PathBuf> = fs::read_dir(store.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let record = serde_json::from_slice(&fs::read(runs[0].join("run.json")).unwrap()).unwrap();
    (runs[0].clone(), record)
}

/// The run's cgroup directories from its `run.json`.
fn run_cgroups(record: &serde_json::Value) -> Vec<PathBuf> {
    record["cgroups"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| PathBuf::from(p.as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The table row of `job`.
fn row<'a>(table: &'a str, job: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(job))
        .unwrap_or_else(|| panic!("no row for {job}: {table}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Processes on the host whose command line is exactly `words`.
fn processes(words: &[&str]) -> Vec<String> {
    let want: Vec<u8> = words
        .iter()
        .flat_map(|w| [w.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What portage's `FEATURES=cgroup` does around a phase, as every job's
/// emerge would (PID 2 in its PID namespace): make `portage/emerge-2`, move
/// the phase into it, wait until all three jobs are inside theirs, then
/// empty and remove it. Before job cgroups, all jobs shared the host's one
/// `portage/emerge-2`, and the first to remove it killed the others.
const PORTAGE_LIKE: &str = r#"set -e
cat /proc/self/cgroup
cg=/sys/fs/cgroup/portage/emerge-2
[ -d /sys/fs/cgroup/portage ] || mkdir /sys/fs/cgroup/portage
mkdir $cg
bash -c "echo \$\$ > $cg/cgroup.procs; cat /proc/self/cgroup; touch /var/cache/binpkgs/in-$(hostname)
  n=0; while [ \$(ls /var/cache/binpkgs | grep -c ^in-) -lt 3 ] && [ \$n -lt 300 ]; do sleep 0.05; n=\$((n+1)); done
  sleep 0.3"
[ -z "$(cat $cg/cgroup.procs)" ]
busybox rmdir $cg
echo portage-done
"#;

#[test]
fn portage_cgroup_feature_works_per_job_on_v2() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    let rs = RunStore::new();
    let out = util::run(on_v2(
        rs.run()
            .args(["--repeat", "3", "--jobs", "3", "--"])
            .arg(PORTAGE_LIKE),
    ));
    let (table, err) = text(&out);
    let (run, record) = the_run(&rs.store());
    for job in ["1", "2", "3"] {
        let log = fs::read_to_string(run.join(job).join("log")).unwrap();
        assert!(
            row(&table, job).contains(" ok "),
            "{table}\n{err}\njob {job}: {log}"
        );
        // The job's cgroup namespace: its init is in `/init` of its own
        // tree, and portage's group is a child of that tree.
        assert!(log.lines().any(|l| l == "0::/init"), "job {job}: {log}");
        assert!(log.contains("0::/portage/emerge-2\n"), "job {job}: {log}");
        assert!(log.ends_with("portage-done\n"), "job {job}: {log}");
        assert!(util::pkgdir(&rs.store()).join(format!("in-{job}")).exists());
    }
    assert!(out.status.success(), "{table}\n{err}");
    let groups = run_cgroups(&record);
    assert!(!groups.is_empty(), "run.json names no cgroup");
    // The cgroup2 mount was private to the run, the hierarchy is not: its
    // groups were made under the test's own v2 group, and are gone.
    for g in groups {
        let rel = g.strip_prefix("/sys/fs/cgroup").unwrap();
        assert!(
            rel.ends_with(record["id"].as_str().unwrap()),
            "{}",
            g.display()
        );
        assert!(!v2_host_path(rel).exists(), "{} left", g.display());
    }
}

/// `rel` (a path in the v2 hierarchy) on the host, where the test can see it.
fn v2_host_path(rel: &Path) -> PathBuf {
    let mount = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .next()
        .expect("the host mounts cgroup2");
    Path::new(&mount).join(rel)
}

#[test]
fn jobs_get_groups_of_their_own_on_v1() {
    if !util::require_root() || !have_v1() {
        return;
    }
    let rs = RunStore::new();
    let memory = v1_own("memory").unwrap();
    // Each job waits (boundedly) for the test to look at its group first: a
    // job that ended before the look would leave its group empty.
    let script = r#"touch /var/cache/binpkgs/in-$(hostname)
n=0; while [ ! -e /var/cache/binpkgs/go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
grep -e memory -e pids -e '^0::' /proc/self/cgroup"#;
    let child = rs
        .run()
        .args(["--repeat", "3", "--jobs", "3", "--", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the jobs run, each has its own memory group under the runner's.
    let cookies = || util::pkgdir(&rs.store());
    wait_until("jobs never started", || {
        (1..=3).all(|i| cookies().join(format!("in-{i}")).exists())
    });
    let (run, record) = the_run(&rs.store());
    let id = record["id"].as_str().unwrap().to_owned();
    for job in ["1", "2", "3"] {
        let procs = memory
            .join("portroot")
            .join(&id)
            .join(job)
            .join("cgroup.procs");
        let procs = fs::read_to_string(&procs).unwrap_or_default();
        assert!(
            !procs.trim().is_empty(),
            "job {job} has no process in {}",
            memory.display()
        );
    }
    fs::write(cookies().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let (table, err) = text(&out);
    assert!(out.status.success(), "{table}\n{err}");
    for job in ["1", "2", "3"] {
        let log = fs::read_to_string(run.join(job).join("log")).unwrap();
        // Each hierarchy's namespace root is the job's group.
        assert!(log.contains(":memory:/\n"), "job {job}: {log}");
        assert!(log.contains(":pids:/\n"), "job {job}: {log}");
    }
    assert!(
        !memory.join("portroot").join(&id).exists(),
        "run cgroup left"
    );
    for g in run_cgroups(&record) {
        assert!(!g.exists(), "{} left", g.display());
    }
}

#[test]
fn a_job_over_its_memory_limit_is_oom_and_its_neighbours_are_ok() {
    if !util::require_root() || !have_v1() {
        return;
    }
    let rs = RunStore::new();
    let jobs = rs.tmp.path().join("jobs");
    fs::write(
        &jobs,
        "before\techo fine\nhog\ttail /dev/zero\nbeside\tsleep 1; echo fine\n",
    )
    .unwrap();
    let out = util::run(
        rs.run()
            .args(["--memory", "64M", "--jobs", "3", "--job-file"])
            .arg(&jobs),
    );
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{table}\n{err}");
    assert_eq!(err, "portroot: 1 of 3 jobs failed\n");
    assert!(row(&table, "hog").contains(" oom "), "{table}");
    assert!(row(&table, "before").contains(" ok "), "{table}");
    assert!(row(&table, "beside").contains(" ok "), "{table}");
    let (run, record) = the_run(&rs.store());
    let status = fs::read_to_string(run.join("hog/status")).unwrap();
    assert!(status.starts_with("oom\n"), "{status}");
    assert!(status.contains("oom_kills 1\n"), "{status}");
    // The limit held: the hog never got past 64M.
    let peak: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("peak_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(peak <= 64 << 20, "{status}");
    assert_eq!(record["limits"]["memory"], 64 << 20);
    let outcomes = record["outcomes"].as_array().unwrap();
    assert_eq!(outcomes[1]["status"], "oom");
}

#[test]
fn a_daemon_a_job_leaves_behind_dies_with_it() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    // On the host as it is, and on a unified view of it.
    for v2 in [false, true] {
        let rs = RunStore::new();
        let script = "busybox setsid sleep 1013 & sleep 0.2; echo daemon=$(cat /proc/$!/stat | cut -d' ' -f6)";
        let mut cmd = rs.run();
        cmd.args(["--", script]);
        if v2 {
            on_v2(&mut cmd);
        }
        let out = util::ok(&mut cmd);
        let (run, record) = the_run(&rs.store());
        let log = fs::read_to_string(run.join("1/log")).unwrap();
        assert!(log.starts_with("daemon="), "v2={v2}: {log}");
        assert!(
            processes(&["sleep", "1013"]).is_empty(),
            "v2={v2}: the daemon survived: {out}"
        );
        let groups = run_cgroups(&record);
        assert!(!groups.is_empty(), "v2={v2}: run.json names no cgroup");
        for g in groups {
            let on_host = if v2 {
                v2_host_path(g.strip_prefix("/sys/fs/cgroup").unwrap())
            } else {
                g
            };
            assert!(!on_host.exists(), "v2={v2}: {} left", on_host.display());
        }
    }
}

#[test]
fn cpu_seconds_and_peak_memory_are_in_the_status_and_the_table() {
    if !util::require_root() || !have_v1() {
        return;
    }
    let rs = RunStore::new();
    let script = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; x=$(head -c 20000000 /dev/zero | tr '\\0' a); echo ${#x}";
    let table = util::ok(rs.run().args(["--", script]));
    let (run, record) = the_run(&rs.store());
    assert_eq!(fs::read_to_string(run.join("1/log")).unwrap(), "20000000\n");
    let status = fs::read_to_string(run.join("1/status")).unwrap();
    let value = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}: {status}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(status.starts_with("ok\n"), "{status}");
    assert!(value("cpu_seconds ") >= 0.1, "{status}");
    // The 20 MB string, twice over in bash's hands at some point.
    assert!(value("peak_memory_bytes ") >= 20e6, "{status}");
    let header = table.lines().next().unwrap();
    assert!(
        header.contains(" CPU ") && header.contains(" PEAK "),
        "{table}"
    );
    let cells: Vec<&str> = row(&table, "1").split_whitespace().collect();
    let cpu: f64 = cells[3].parse().unwrap_or_else(|_| panic!("{table}"));
    assert!(cpu >= 0.1, "{table}");
    assert!(cells[4].ends_with('M'), "{table}");
    assert!(
        record["outcomes"][0]["usage"]["cpu"].is_object(),
        "{record}"
    );
}

#[test]
fn limits_from_flags_and_config_reach_the_job_group() {
    if !util::require_root() || !have_v1() {
        return;
    }
    let rs = RunStore::new();
    let job_group = |id: &str, controller: &str| {
        v1_own(controller)
            .unwrap()
            .join("portroot")
            .join(id)
            .join("1")
    };
    // The job reports itself started, then waits for the test to look.
    let script = "touch /var/cache/binpkgs/started; while [ ! -e /var/cache/binpkgs/seen ]; do sleep 0.05; done";
    let observe = |cmd: &mut Command| -> [String; 3] {
        let _ = fs::remove_file(util::pkgdir(&rs.store()).join("seen"));
        let _ = fs::remove_file(util::pkgdir(&rs.store()).join("started"));
        let mut child = cmd
            .args(["--", script])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("job never started", || {
            util::pkgdir(&rs.store()).join("started").exists()
        });
        let id = fs::read_dir(rs.store().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.join("1/status").exists())
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let read = |c: &str, f: &str| {
            fs::read_to_string(job_group(&id, c).join(f))
                .unwrap()
                .trim()
                .to_owned()
        };
        let got = [
            read("memory", "memory.limit_in_bytes"),
            read("cpu", "cpu.cfs_quota_us"),
            read("pids", "pids.max"),
        ];
        fs::write(util::pkgdir(&rs.store()).join("seen"), "").unwrap();
        assert!(child.wait().unwrap().success());
        got
    };
    let got = observe(
        rs.run()
            .args(["--memory", "64M", "--cpus", "0.5", "--pids", "100"]),
    );
    assert_eq!(got, ["67108864", "50000", "100"]);
    fs::write(
        rs.store().join("config.toml"),
        "[run]\nmemory = \"32M\"\ncpus = 1.25\npids = 50\n",
    )
    .unwrap();
    let got = observe(&mut rs.run());
    assert_eq!(got, ["33554432", "125000", "50"]);
    // A flag overrides its key.
    let got = observe(rs.run().args(["--pids", "70"]));
    assert_eq!(got[2], "70");
}

#[test]
fn bad_limits_are_usage_errors_of_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let run = |args: &[&str]| {
        let mut c = util::portroot(&store);
        c.args(["run", "--stage", "s", "--tag", "t"])
            .args(args)
            .args(["--", "true"]);
        c
    };
    for (args, want) in [
        (&["--memory", "12X"][..], "bad size unit"),
        (&["--memory", "512K"][..], "at least 1M"),
        (&["--cpus", "0"][..], "CPU count must be 0.01 to 4096"),
        (&["--cpus", "1.2345"][..], "more than three decimals"),
        (&["--pids", "0"][..], "pids limit must be 1 to"),
        (&["--pids", "many"][..], "bad number"),
    ] {
        let err = util::fails(&mut run(args), 2);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        assert!(
            errors[0].contains(args[0]) && errors[0].contains(want),
            "{args:?}: {err}"
        );
    }
    for (text, want) in [
        (
            "[run]\nmemory = \"1K\"\n",
            "2:10: memory limit must be at least 1M, not 1024 bytes",
        ),
        (
            "[run]\ncpus = -1\n",
            "2:8: bad CPU count \"-1\": expected a number such as 2 or 0.5",
        ),
        (
            "[run]\npids = 5000000\n",
            "2:8: pids must be 1 to 4194304, not 5000000",
        ),
    ] {
        let path = store.join("config.toml");
        fs::write(&path, text).unwrap();
        let err = util::fails(&mut run(&[]), 2);
        assert_eq!(
            err,
            format!("portroot: {}:{want}\n", path.display()),
            "{text:?}"
        );
    }
    fs::write(
        store.join("config.toml"),
        "[run]\nmemory = \"2G\"\ncpus = 2.5\npids = 4096\n",
    )
    .unwrap();
    let shown = util::ok(util::portroot(&store).args(["config", "show"]));
    for line in ["memory = 2147483648", "cpus = 2.5", "pids = 4096"] {
        assert!(shown.contains(line), "{shown}");
    }
}

#[test]
fn gc_removes_the_cgroups_of_a_killed_run() {
    if !util::require_root() || !have_v1() {
        return;
    }
    let rs = RunStore::new();
    let mut child = rs
        .run()
        .args(["--", "touch /var/cache/binpkgs/started; sleep 600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("job never started", || {
        util::pkgdir(&rs.store()).join("started").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, record) = the_run(&rs.store());
    let groups = run_cgroups(&record);
    assert!(!groups.is_empty());
    assert!(groups.iter().all(|g| g.exists()), "{groups:?}");
    util::ok(util::portroot(&rs.store()).arg("gc"));
    for g in &groups {
        assert!(!g.exists(), "{} left after gc", g.display());
    }
}

#[test]
fn sigterm_of_the_run_leaves_no_cgroup() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    let rs = RunStore::new();
    let cookies = || util::pkgdir(&rs.store());
    let mut child = rs
        .run()
        .args(["--repeat", "3", "--jobs", "2", "--"])
        .arg("touch /var/cache/binpkgs/started-$(hostname); busybox setsid sleep 1017 & sleep 600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("jobs never started", || {
        cookies().join("started-1").exists() && cookies().join("started-2").exists()
    });
    let (_, record) = the_run(&rs.store());
    let groups = run_cgroups(&record);
    assert!(!groups.is_empty(), "run.json names no cgroup");
    assert!(groups.iter().all(|g| g.join("1").is_dir()), "{groups:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    for g in &groups {
        assert!(!g.exists(), "{} left after SIGTERM", g.display());
    }
    assert!(processes(&["sleep", "1017"]).is_empty());
}

/// A v2 controller the cgroup2 root gives its children on this host,
/// enabled there (the root may hold processes and pass controllers down):
/// on the test VM the others are bound to v1 hierarchies and only
/// `hugetlb` is free. `None` (the test skips) where none is.
fn free_v2_controller() -> Option<String> {
    let root = v2_host_path(Path::new(""));
    let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    let Some(ctrl) = offered.split_whitespace().next().map(str::to_owned) else {
        assert!(
            std::env::var_os("PORTROOT_TEST_MUST_RUN").is_none(),
            "the cgroup2 root offers no controller"
        );
        eprintln!("skipped: the cgroup2 root offers no controller on this host");
        return None;
    };
    fs::write(root.join("cgroup.subtree_control"), format!("+{ctrl}")).unwrap();
    Some(ctrl)
}

/// A v2 group of the test's own under the root, made free of processes
/// and removed on drop.
struct TestGroup {
    /// The group, as the test sees it.
    host: PathBuf,
    /// Its name, under the root.
    name: String,
}

impl TestGroup {
    fn new(what: &str) -> TestGroup {
        let name = format!("portroot-test-{what}-{}", std::process::id());
        let host = v2_host_path(Path::new(&name));
        fs::create_dir(&host).unwrap();
        TestGroup { host, name }
    }

    /// Start `cmd` inside the group.
    fn enter<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.host
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: between fork and exec only open, write and close on a
        // string made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = libc::write(fd, c"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if rc == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            })
        }
    }

    fn procs(&self, sub: &str) -> Vec<u32> {
        fs::read_to_string(self.host.join(sub).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    }

    fn subgroups(&self) -> Vec<String> {
        fs::read_dir(&self.host)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn subtree_control(&self) -> String {
        fs::read_to_string(self.host.join("cgroup.subtree_control"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = fs::write(self.host.join("cgroup.kill"), "1");
        fn remove(dir: &Path) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
            let start = Instant::now();
            while fs::remove_dir(dir).is_err() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        remove(&self.host);
    }
}

/// A job that prints the controllers its cgroup2 offers, says it started
/// and waits (boundedly) for the test's go.
const SHOW_CONTROLLERS: &str = r#"echo "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
touch /var/cache/binpkgs/started
n=0; while [ ! -e /var/cache/binpkgs/go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done"#;

#[test]
fn a_runner_alone_in_its_v2_group_moves_into_a_leaf_and_back() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    let Some(ctrl) = free_v2_controller() else {
        return;
    };
    let group = TestGroup::new("leaf");
    let rs = RunStore::new();
    let cookies = || util::pkgdir(&rs.store());
    let mut cmd = rs.run();
    cmd.args(["--", SHOW_CONTROLLERS])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = on_v2(group.enter(&mut cmd)).spawn().unwrap();
    wait_until("job never started", || cookies().join("started").exists());
    // The runner left its group for the leaf, so the group could pass the
    // controller down to the run's groups beside the leaf.
    assert_eq!(group.procs(""), Vec::<u32>::new());
    // (With the children it had then, such as the repository mount's reaper.)
    assert!(
        group.procs("portroot-runner").contains(&child.id()),
        "{:?}",
        group.procs("portroot-runner")
    );
    assert!(
        group.subtree_control().contains(&ctrl),
        "{}",
        group.subtree_control()
    );
    let mut subs = group.subgroups();
    subs.sort();
    assert_eq!(subs, ["portroot", "portroot-runner"]);
    fs::write(cookies().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let (table, err) = text(&out);
    assert!(out.status.success(), "{table}\n{err}");
    let (run, record) = the_run(&rs.store());
    let log = fs::read_to_string(run.join("1/log")).unwrap();
    // The job's own cgroup2 offers it: passed down all the way.
    assert!(
        log.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .any(|c| c == ctrl),
        "{log}"
    );
    // The leaf was in run.json (for gc), and all is as before the run.
    let leaf = format!("/sys/fs/cgroup/{}/portroot-runner", group.name);
    assert!(
        run_cgroups(&record).contains(&PathBuf::from(&leaf)),
        "{record}"
    );
    assert_eq!(group.subgroups(), Vec::<String>::new());
    assert_eq!(group.subtree_control(), "");
}

#[test]
fn a_runner_sharing_its_v2_group_moves_nobody_and_says_why() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    let Some(_) = free_v2_controller() else {
        return;
    };
    let group = TestGroup::new("shared");
    // A process that is not the runner's, as a login shell would be.
    let mut neighbour = group
        .enter(Command::new("sleep").arg("600"))
        .spawn()
        .unwrap();
    let rs = RunStore::new();
    let mut cmd = rs.run();
    cmd.arg("-vv").args([
        "--",
        "echo \"controllers: $(cat /sys/fs/cgroup/cgroup.controllers)\"",
    ]);
    let out = util::run(on_v2(group.enter(&mut cmd)));
    let (table, err) = text(&out);
    // A limit that needs a controller the group is not given is refused
    // in one line naming what the group is given.
    let mut cmd = rs.run();
    cmd.args(["--pids", "10", "--", "true"]);
    let refused = util::fails(on_v2(group.enter(&mut cmd)), 1);
    neighbour.kill().unwrap();
    neighbour.wait().unwrap();
    assert!(out.status.success(), "{table}\n{err}");
    assert_eq!(refused.lines().count(), 1, "{refused}");
    assert!(
        refused.contains("--pids needs the pids controller")
            && refused.contains(&format!("/sys/fs/cgroup/{} is given only", group.name)),
        "{refused}"
    );
    let run = rs.store().join("runs").join(
        fs::read_dir(rs.store().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .find(|n| rs.store().join("runs").join(n).join("1/log").exists())
            .unwrap(),
    );
    let log = fs::read_to_string(run.join("1/log")).unwrap();
    assert_eq!(log, "controllers: \n");
    // The debug line names the group and the other process.
    let why = format!(
        "/sys/fs/cgroup/{} also holds processes not the runner's (pids {})",
        group.name,
        neighbour.id()
    );
    assert!(err.contains(&why), "{err}");
    // Nothing was moved or made: the group stays a leaf.
    assert_eq!(group.subgroups(), Vec::<String>::new());
    assert_eq!(group.subtree_control(), "");
}

#[test]
fn gc_removes_the_leaf_a_killed_v2_runner_left() {
    if !util::require_root() || !have_cgroup2() {
        return;
    }
    let Some(_) = free_v2_controller() else {
        return;
    };
    let group = TestGroup::new("gc");
    let rs = RunStore::new();
    let cookies = || util::pkgdir(&rs.store());
    let mut cmd = rs.run();
    cmd.args(["--", SHOW_CONTROLLERS])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = on_v2(group.enter(&mut cmd)).spawn().unwrap();
    wait_until("job never started", || cookies().join("started").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    let mut subs = group.subgroups();
    subs.sort();
    assert_eq!(subs, ["portroot", "portroot-runner"]);
    util::ok(on_v2(util::portroot(&rs.store()).arg("gc")));
    assert_eq!(group.subgroups(), Vec::<String>::new());
    assert_eq!(group.subtree_control(), "");
    assert_eq!(group.procs(""), Vec::<u32>::new());
}
