//! The run report in a real browser: Debian's chromium, headless, fetched
//! into the fixture cache on first use (never installed), loads a run's
//! `runs/<id>/index.html` and its DOM holds the job table, every job's status
//! and the package list.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use portroot::fixture::chromium::{self, Chromium, PAGE_BOUND};

use crate::runner::{run_dirs, RunStore};
use crate::util;

/// Chromium from the fixture cache, or `None` (the test skips) when it
/// cannot be had; with `PORTROOT_TEST_MUST_RUN=1` that is a failure.
fn browser() -> Option<Chromium> {
    let started = Instant::now();
    match chromium::chromium() {
        Ok(c) => {
            eprintln!(
                "chromium from the fixture cache in {:?}: {}",
                started.elapsed(),
                c.root().display()
            );
            Some(c)
        }
        Err(e) => {
            if std::env::var_os("PORTROOT_TEST_MUST_RUN").is_some_and(|v| v == "1") {
                panic!("PORTROOT_TEST_MUST_RUN=1 but chromium cannot be had: {e}");
            }
            eprintln!("skipped: chromium cannot be had: {e}");
            None
        }
    }
}

/// The part of `dom` from the first `open` to the next `close` after it.
fn section<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in the DOM:\n{dom}"));
    let len = dom[start..]
        .find(close)
        .unwrap_or_else(|| panic!("{open} never closed in the DOM:\n{dom}"));
    &dom[start..start + len + close.len()]
}

/// The value of attribute `name` in the start tag that begins `tag`
/// (`tag` may start with `<` and the element's name, or after them).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let head = &tag[..tag.find('>')?];
    let pattern = format!("{name}=\"");
    let at = head
        .match_indices(&pattern)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || head.as_bytes()[i - 1] == b' ')?;
    let from = at + pattern.len();
    Some(&head[from..from + head[from..].find('"')?])
}

/// Each job row of the job table: (name, status class, status text).
fn job_rows(table: &str) -> Vec<(String, String, String)> {
    table
        .split("<tr ")
        .skip(1)
        .filter(|row| attribute(row, "class") == Some("job"))
        .map(|row| {
            let name = attribute(row, "data-job").expect("a data-job").to_owned();
            let cell = section(row, "<td class=\"status ", "</td>");
            let class = attribute(cell, "class").expect("a class");
            let class = class.trim_start_matches("status ").to_owned();
            let text = cell[cell.find('>').unwrap() + 1..cell.len() - "</td>".len()].to_owned();
            (name, class, text)
        })
        .collect()
}

#[test]
fn report_browser_shows_jobs_statuses_and_packages() {
    if !util::require_root() {
        return;
    }
    let Some(browser) = browser() else {
        return;
    };
    let rs = RunStore::new();
    let jobs = rs.tmp.path().join("jobs");
    fs::write(
        &jobs,
        "good\tmkdir -p /var/cache/binpkgs/app-misc/hello && \
         echo pkg > /var/cache/binpkgs/app-misc/hello/hello-1-1.gpkg.tar\n\
         bad\techo 'it broke' && exit 3\n\
         also-good\techo pkg > /var/cache/binpkgs/also-1.tbz2\n",
    )
    .unwrap();
    let out = util::run(rs.run().arg("--job-file").arg(&jobs));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let runs = run_dirs(&rs.store());
    assert_eq!(runs.len(), 1, "{runs:?}");
    let page = runs[0].join("index.html");

    let scratch = rs.tmp.path().join("browser");
    fs::create_dir(&scratch).unwrap();
    let started = Instant::now();
    let dom = browser
        .dump_dom_in(&page, &scratch, PAGE_BOUND)
        .unwrap_or_else(|e| panic!("chromium on {}: {e}", page.display()));
    eprintln!(
        "chromium dumped the report's DOM in {:?}",
        started.elapsed()
    );

    // The document the browser built from the page: its summary first.
    assert!(dom.contains("<html lang=\"en\"><head>"), "{dom}");
    assert!(dom.contains("id=\"state\">failed</span>"), "{dom}");
    let table = section(&dom, "<table id=\"jobs\">", "</table>");
    let mut rows = job_rows(table);
    rows.sort();
    let row = |n: &str, c: &str, t: &str| (n.to_owned(), c.to_owned(), t.to_owned());
    assert_eq!(
        rows,
        [
            row("also-good", "ok", "ok"),
            row("bad", "failed", "exit 3"),
            row("good", "ok", "ok"),
        ],
        "{table}"
    );
    let list = section(&dom, "<ul id=\"packages\">", "</ul>");
    let packages: Vec<&str> = list
        .split("<li class=\"package\">")
        .skip(1)
        .map(|li| &li[..li.find("</li>").expect("a closed li")])
        .collect();
    assert_eq!(packages, ["also-1", "app-misc/hello/hello-1-1"], "{list}");
    assert_nothing_left(&scratch);
}

#[test]
fn report_browser_that_hangs_is_killed_within_its_bound() {
    let Some(browser) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("hang.html");
    fs::write(
        &page,
        "<html><body><script>for(;;){}</script></body></html>",
    )
    .unwrap();
    let started = Instant::now();
    let e = browser
        .dump_dom_in(&page, dir.path(), Duration::from_secs(5))
        .expect_err("a page that never loads");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "{e}");
    assert_nothing_left(dir.path());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the page is left"
    );
}

/// No browser process mentions `scratch`, and no scratch directory of one is
/// left in it.
fn assert_nothing_left(scratch: &Path) {
    let procs = util::processes_mentioning(&scratch.to_string_lossy());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let left: Vec<_> = fs::read_dir(scratch)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("portroot-chromium-"))
        .collect();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
}
