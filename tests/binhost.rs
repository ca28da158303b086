//! Binhost generations through the CLI: `run --binhost/--publish` and
//! `portroot binhost`, first with the test stage's shell jobs, then with
//! real portage building into a generation and a client installing from
//! the published `current` over loopback HTTP.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::portage::{self, Mirror, PortageStore};
use crate::runner::RunStore;
use crate::util;

/// Every file below `dir` (links followed at the top only): its bytes and
/// inode, by path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_owned();
                out.insert(rel, (fs::read(&p).unwrap_or_default(), md.ino()));
            }
        }
    }
    out
}

/// The newest run's id.
fn newest_run(store: &Path) -> String {
    let runs = store.join("runs");
    let mut ids: Vec<(std::time::SystemTime, String)> = fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.json").is_file())
        .map(|p| {
            let made = fs::metadata(p.join("lock")).unwrap().modified().unwrap();
            (made, p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    ids.sort();
    ids.pop().expect("a run").1
}

/// The log of job `1` of the newest run (by when it started: two runs in
/// one second have ids in random order).
fn newest_log(store: &Path) -> String {
    let run = newest_run(store);
    fs::read_to_string(store.join("runs").join(run).join("1/log")).unwrap()
}

fn current(store: &Path) -> Option<String> {
    fs::read_link(store.join("binpkgs/current"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

#[test]
fn binhost_commands_refuse_bad_input_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let list = util::ok(util::portroot(&store).args(["binhost", "list"]));
    assert_eq!(list.lines().count(), 1, "a header only: {list}");
    for args in [
        &["binhost", "publish", "20261206-000000-abcd"][..],
        &["binhost", "rollback"],
        &["binhost", "diff", "a", "b"],
        &["binhost", "keep", "nope"],
    ] {
        let err = util::fails(util::portroot(&store).args(args), 1);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    for args in [
        &["binhost", "list", "--binhost", "../elsewhere"][..],
        &["binhost", "publish", "../x"],
        &["binhost", "gc", "--keep", "-1"],
    ] {
        util::fails(util::portroot(&store).args(args), 2);
    }
    // The configured binhost is the one the commands use.
    let conf = tmp.path().join("portroot.toml");
    fs::write(&conf, "[run]\nbinhost = \"builds\"\n").unwrap();
    let err = util::fails(
        util::portroot(&store)
            .arg("--config")
            .arg(&conf)
            .args(["binhost", "rollback"]),
        1,
    );
    assert!(
        err.contains(&format!("no binhost at {}", store.join("builds").display())),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(&store).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn runs_write_generations_that_publish_rollback_and_gc_move_between() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let store = rs.store();
    let pkg = "mkdir -p /var/cache/binpkgs/cat && cd /var/cache/binpkgs/cat";
    // Tools must replace files by rename, as portage does: `mv`.
    util::ok(rs.run().args([
        "--publish",
        "--",
        &format!("{pkg} && echo a1 > a-1.gpkg.tar"),
    ]));
    let first = newest_run(&store);
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    let served = store.join("binpkgs/current/cat");
    assert_eq!(
        fs::read_to_string(served.join("a-1.gpkg.tar")).unwrap(),
        "a1\n"
    );
    let before = snapshot(&store.join("binpkgs/current"));

    // A second run, not published: clients still see the first. The
    // configuration's run.binhost makes it write a generation.
    let conf = rs.tmp.path().join("portroot.toml");
    fs::write(&conf, "[run]\nbinhost = \"binpkgs\"\n").unwrap();
    util::ok(rs.run().arg("--config").arg(&conf).args([
        "--",
        &format!("{pkg} && echo b1 > b-1.gpkg.tar && echo a2 > .a && mv .a a-1.gpkg.tar"),
    ]));
    let second = newest_run(&store);
    assert_ne!(first, second);
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    assert!(!served.join("b-1.gpkg.tar").exists());
    assert_eq!(
        snapshot(&store.join("binpkgs/generations").join(&first)),
        before
    );
    let diff = util::ok(util::portroot(&store).args(["binhost", "diff", &first, &second]));
    assert_eq!(diff, "+ cat/b-1\n~ cat/a-1\n");
    let runs = util::ok(util::portroot(&store).arg("runs"));
    let published: Vec<&str> = runs
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().rev().nth(1).unwrap())
        .collect();
    assert_eq!(published, ["current", "no"], "{runs}");

    // Publish makes it visible (into the binhost the run wrote, not another
    // one); rollback takes it away again.
    let err = util::fails(
        util::portroot(&store).args(["binhost", "publish", "--binhost", "other", &second]),
        1,
    );
    assert!(err.contains("wrote into the binhost"), "{err}");
    assert!(!store.join("other").exists());
    util::ok(util::portroot(&store).args(["binhost", "publish", &second]));
    assert_eq!(
        fs::read_to_string(served.join("b-1.gpkg.tar")).unwrap(),
        "b1\n"
    );
    let report = fs::read_to_string(store.join("runs").join(&second).join("index.html")).unwrap();
    assert!(
        report.contains(r#"<li class="package">cat/b-1</li>"#),
        "{report}"
    );
    // Written when the run ended: built against its parent, and against
    // the generation clients saw then (the same one here), a1 rebuilt.
    for want in [
        format!(r#"<code id="generation">{second}</code>"#),
        r#"<span id="published">not published</span>"#.to_owned(),
        r#"<ul id="packages-rebuilt">"#.to_owned(),
        r#"<ul id="against-published">"#.to_owned(),
    ] {
        assert!(report.contains(&want), "no {want} in {report}");
    }
    util::ok(util::portroot(&store).args(["binhost", "rollback"]));
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    assert!(!served.join("b-1.gpkg.tar").exists());

    // A failed run with --publish publishes nothing.
    util::fails(
        rs.run().args([
            "--publish",
            "--",
            &format!("{pkg} && touch c-1.gpkg.tar && false"),
        ]),
        1,
    );
    let failed = newest_run(&store);
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    let err = util::fails(
        util::portroot(&store).args(["binhost", "publish", &failed]),
        1,
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));

    // gc keeps current (and kept ones); the unpublished and the rolled-back go.
    util::ok(util::portroot(&store).args(["binhost", "keep", &second]));
    util::ok(util::portroot(&store).args(["-q", "binhost", "gc", "--keep", "1"]));
    let list = util::ok(util::portroot(&store).args(["binhost", "list"]));
    assert!(list.contains(&format!("* {first}")), "{list}");
    assert!(list.contains(&second) && list.contains("kept"), "{list}");
    assert!(!list.contains(&failed), "{list}");
    assert!(!store.join("binpkgs/generations").join(&failed).exists());
}

#[test]
fn a_plain_run_writes_a_generation_and_a_shell_reads_current() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let store = rs.store();
    util::ok(rs.run().args([
        "--publish",
        "--",
        "echo a > /var/cache/binpkgs/a-1.gpkg.tar",
    ]));
    let first = current(&store).expect("published");
    // No flag, no configuration: the run writes a generation of its own,
    // unpublished, and nothing at the binhost's top.
    util::ok(
        rs.run()
            .args(["--", "echo b > /var/cache/binpkgs/b-1.gpkg.tar"]),
    );
    let second = newest_run(&store);
    assert_ne!(first, second);
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    let gen = util::run_pkgdir(&store, &second);
    assert_eq!(fs::read_to_string(gen.join("b-1.gpkg.tar")).unwrap(), "b\n");
    assert_eq!(fs::read_to_string(gen.join("a-1.gpkg.tar")).unwrap(), "a\n");
    assert!(!store.join("binpkgs/current/b-1.gpkg.tar").exists());
    assert!(!store.join("binpkgs/b-1.gpkg.tar").exists());

    // A shell sees what clients see, read-only.
    let mut shell = util::portroot(&store);
    shell
        .args(["shell", "--stage", "test", "--tag", "2026-08-21"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = shell.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"cd /var/cache/binpkgs; cat a-1.gpkg.tar; test -e b-1.gpkg.tar || echo no-b;\
              touch x 2>/dev/null || echo read-only; exit 0\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nno-b\nread-only\n");

    // --binpkgs DIR: one shared directory, no generation.
    let shared = rs.tmp.path().join("shared");
    let gens = fs::read_dir(store.join("binpkgs/generations"))
        .unwrap()
        .count();
    util::ok(
        rs.run()
            .arg("--binpkgs")
            .arg(&shared)
            .args(["--", "echo c > /var/cache/binpkgs/c-1.gpkg.tar"]),
    );
    assert_eq!(
        fs::read_to_string(shared.join("c-1.gpkg.tar")).unwrap(),
        "c\n"
    );
    assert_eq!(
        fs::read_dir(store.join("binpkgs/generations"))
            .unwrap()
            .count(),
        gens
    );
    util::assert_no_mounts_under(rs.tmp.path());
}

#[test]
fn a_killed_run_publishes_nothing_and_gc_removes_its_generation() {
    if !util::require_root() {
        return;
    }
    let rs = RunStore::new();
    let store = rs.store();
    // A binhost from before generations: its packages become the first
    // generation's, not packages that run built.
    let legacy = store.join("binpkgs");
    fs::create_dir_all(legacy.join("cat")).unwrap();
    fs::write(legacy.join("cat/old-1.gpkg.tar"), "old").unwrap();
    fs::write(
        legacy.join("Packages"),
        "VERSION: 0\n\nCPV: cat/old-1\nPATH: cat/old-1.gpkg.tar\n\n",
    )
    .unwrap();
    util::ok(
        rs.run()
            .args(["--publish", "--", "touch /var/cache/binpkgs/a-1.gpkg.tar"]),
    );
    let first = current(&store).expect("published");
    let served = fs::read_to_string(legacy.join("current/cat/old-1.gpkg.tar")).unwrap();
    assert_eq!(served, "old");
    let record: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(store.join("runs").join(&first).join("run.json")).unwrap(),
    )
    .unwrap();
    let gen = &record["binhost"];
    assert_eq!(
        (gen["generation"].as_str(), gen["packages"].as_u64()),
        (Some(first.as_str()), Some(1))
    );
    assert_eq!(gen["built"]["added"], serde_json::json!([]), "{gen}");
    let mut child = rs
        .run()
        .args([
            "--publish",
            "--",
            "touch /var/cache/binpkgs/started; sleep 600",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gens = store.join("binpkgs/generations");
    let started = || {
        fs::read_dir(&gens)
            .unwrap()
            .any(|e| e.unwrap().path().join("started").exists())
    };
    while !started() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(child.try_wait().unwrap().is_none(), "runner exited early");
    }
    // While it runs, gc leaves its generation alone.
    util::ok(util::portroot(&store).args(["-q", "binhost", "gc", "--keep", "1"]));
    assert!(started());
    child.kill().unwrap();
    child.wait().unwrap();
    util::assert_no_mounts_under(rs.tmp.path());
    // What a SIGKILL leaves (the run's cgroups among it) is gc's.
    let killed: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            rs.store()
                .join("runs")
                .join(newest_run(&store))
                .join("run.json"),
        )
        .unwrap(),
    )
    .unwrap();
    util::ok(util::portroot(&store).args(["-q", "gc"]));
    let groups = killed["cgroups"].as_array().unwrap();
    assert!(!groups.is_empty(), "{killed}");
    for g in groups {
        let g = std::path::Path::new(g.as_str().unwrap());
        assert!(!g.exists(), "{} left after gc", g.display());
    }
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
    assert!(!store.join("binpkgs/current/started").exists());
    util::ok(util::portroot(&store).args(["-q", "binhost", "gc", "--keep", "1"]));
    assert!(!started());
    let left: Vec<String> = fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&first), "{left:?}");
}

/// `run` a client job that reads the binhost served at `url` (binrepos.conf)
/// into a PKGDIR of its own, `emerge --getbinpkgonly ARGS`.
fn client(s: &PortageStore, url: &str, args: &str) -> std::process::Command {
    let pkgdir = tempfile::tempdir_in(s.tmp.path()).unwrap().keep();
    let script = format!(
        "mkdir -p /etc/portage/binrepos.conf && \
         printf '[test]\\nsync-uri = {url}\\nverify-signature = false\\n' \
         > /etc/portage/binrepos.conf/test.conf && emerge --getbinpkgonly {args}"
    );
    let mut cmd = s.run(&["--binpkgs", &pkgdir.to_string_lossy(), "--", &script]);
    cmd.env_remove("PORTROOT_TEST_LEAK");
    cmd
}

#[test]
fn a_client_sees_only_published_generations() {
    let Some(f) = portage::fixture() else { return };
    let s = PortageStore::new(f);
    let store = s.store();
    let mirror = Mirror::serve(&f.repo.distfiles);
    let mirrors = format!("GENTOO_MIRRORS=\"{}\"", mirror.url);
    let build = |publish: &[&str], atom: &str| {
        let mut args = vec!["--make-conf", &mirrors];
        args.extend_from_slice(publish);
        let script = format!("emerge --buildpkg {atom}");
        args.extend(["--", &script]);
        portage::ok_with_logs(&s, s.run(&args));
    };
    build(&["--publish"], "app-fixture/base");
    let first = newest_run(&store);
    let old = store.join("binpkgs/generations").join(&first);
    let before = snapshot(&old);
    assert!(
        before.contains_key(Path::new("Packages")),
        "{:?}",
        before.keys()
    );

    // Real emerge into a new generation: portage replaces `Packages` and
    // writes packages by rename, so the old generation keeps every byte and
    // every inode.
    build(&["--binhost", "binpkgs"], "app-fixture/app");
    let second = newest_run(&store);
    assert_eq!(snapshot(&old), before);
    let new_index = store
        .join("binpkgs/generations")
        .join(&second)
        .join("Packages");
    assert_ne!(
        fs::metadata(&new_index).unwrap().ino(),
        before[Path::new("Packages")].1
    );
    let cpvs: Vec<String> = portage::packages_index(new_index.parent().unwrap())
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert!(cpvs.contains(&"app-fixture/app-1".to_owned()), "{cpvs:?}");

    // The client sees the published generation only.
    let binhost = Mirror::serve(&store.join("binpkgs/current"));
    let absent = util::run(&mut client(&s, &binhost.url, "--pretend app-fixture/app"));
    assert!(!absent.status.success(), "app installable before publish");
    // It asked the binhost, which did not serve app yet.
    let asked = binhost.requests();
    assert!(
        asked.iter().any(|r| r.starts_with("GET /Packages")),
        "{asked:?}"
    );
    let log = &newest_log(&store);
    assert!(log.contains("app-fixture/app"), "{log}");
    util::ok(util::portroot(&store).args(["binhost", "publish", &second]));
    portage::ok_with_logs(
        &s,
        client(&s, &binhost.url, "app-fixture/app && fixture-app"),
    );
    let log = &newest_log(&store);
    assert!(
        log.contains(">>> Emerging binary (") && log.contains("app-fixture/app-1"),
        "{log}"
    );
    assert!(!log.contains(">>> Compiling source"), "{log}");
    util::ok(util::portroot(&store).args(["binhost", "rollback"]));
    let gone = util::run(&mut client(&s, &binhost.url, "--pretend app-fixture/app"));
    assert!(
        !gone.status.success(),
        "app still installable after rollback"
    );

    // A failed run with --publish publishes nothing.
    util::fails(&mut s.run(&["--publish", "--", "false"]), 1);
    assert_eq!(current(&store).as_deref(), Some(first.as_str()));
}
