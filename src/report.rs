//! `runs/<id>/index.html`: one static, self-contained page per run that a
//! person opens in any browser, with no network and no script: the summary
//! (state, command, the pinned stage, layers and trees), the job table with
//! each job's duration as a bar, the packages the run built (with
//! `--binhost`: its generation against its parent, and against the
//! generation published before it; else what it wrote into PKGDIR),
//! anything refused from the binhost, and each job's log (its tail inline,
//! the whole file linked).
//!
//! Everything that comes from a job (log lines, file names) or from the
//! command line is escaped for HTML: a job printing `<script>` shows it as
//! text.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use portroot_runner::binhost::{self, Binhost, PackageDiff};
use portroot_runner::job::JobOutcome;
use portroot_runner::run::{self as runs, RunGeneration, RunRecord};

/// The report's file name in the run directory.
pub const REPORT: &str = "index.html";

/// How much of each log's end the page shows inline.
const LOG_TAIL_BYTES: u64 = 16 << 10;

/// Write the report of the run in `run_path` from its `record`, atomically
/// (a temporary file renamed over the old report; not synced to disk);
/// returns its path.
pub fn write(run_path: &Path, record: &RunRecord) -> io::Result<PathBuf> {
    let page = render(run_path, record);
    let dest = run_path.join(REPORT);
    let mut tmp = tempfile::NamedTempFile::new_in(run_path)?;
    // No fsync: the page is made again from run.json by `portroot report`,
    // and a run's own end should not wait for the disk.
    tmp.write_all(page.as_bytes())?;
    tmp.persist(&dest).map_err(|e| e.error)?;
    Ok(dest)
}

/// The page for the run in `run_path`.
pub fn render(run_path: &Path, record: &RunRecord) -> String {
    let outcomes = record.outcomes.as_deref().unwrap_or(&[]);
    let mut h = String::new();
    let state = state(record);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>portroot run {id}</title><style>{STYLE}</style></head><body>\n\
         <h1>Run {id} <span class=\"state {state}\" id=\"state\">{state}</span></h1>\n",
        id = text(&record.id),
    );
    summary(&mut h, record, outcomes);
    jobs(&mut h, outcomes);
    packages(&mut h, record);
    refused(&mut h, record);
    logs(&mut h, run_path, outcomes);
    h.push_str("</body></html>\n");
    h
}

/// `ok`, `failed`, `interrupted`, or `running` (no outcomes yet).
fn state(record: &RunRecord) -> &'static str {
    record.ended().unwrap_or("running")
}

fn summary(h: &mut String, record: &RunRecord, outcomes: &[JobOutcome]) {
    let ok = outcomes.iter().filter(|o| o.status.success()).count();
    let mut rows: Vec<(&str, String)> = vec![
        (
            "Started (UTC)",
            text(&runs::utc_stamp(record.start)).into_owned(),
        ),
        (
            "Command",
            format!("<code>{}</code>", text(&record.args.join(" "))),
        ),
        (
            "Stage",
            format!(
                "{} <code>sha256:{}</code>",
                text(&record.stage),
                text(&record.stage_digest)
            ),
        ),
        (
            "Layers",
            if record.layer_names.is_empty() {
                "none".into()
            } else {
                text(&record.layer_names.join(" → ")).into_owned()
            },
        ),
        ("Jobs", format!("{ok} ok of {}", record.jobs.len())),
    ];
    for t in &record.trees {
        let commit = t.commit.as_deref().unwrap_or("?");
        rows.push((
            "Tree",
            format!(
                "{} at {} <code>{}</code>",
                text(&t.name),
                text(&t.reference),
                text(commit)
            ),
        ));
    }
    h.push_str("<table class=\"summary\" id=\"summary\">\n");
    for (k, v) in rows {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    h.push_str("</table>\n");
}

fn jobs(h: &mut String, outcomes: &[JobOutcome]) {
    let longest = outcomes
        .iter()
        .map(|o| o.duration.as_secs_f64())
        .fold(0.0f64, f64::max)
        .max(0.001);
    h.push_str(
        "<h2>Jobs</h2>\n<table id=\"jobs\"><thead><tr><th>Job</th><th>Status</th>\
         <th>Seconds</th><th>CPU s</th><th>Peak memory</th><th class=\"barcol\">Duration</th>\
         </tr></thead><tbody>\n",
    );
    for o in outcomes {
        let status = o.status.to_string();
        let class = if o.status.success() { "ok" } else { "failed" };
        let width = 100.0 * o.duration.as_secs_f64() / longest;
        let _ = writeln!(
            h,
            "<tr class=\"job\" data-job=\"{name_attr}\" data-status=\"{status_attr}\">\
             <td><a href=\"#log-{name_attr}\">{name}</a></td>\
             <td class=\"status {class}\">{status_text}</td><td class=\"num\">{secs}</td>\
             <td class=\"num\">{cpu}</td><td class=\"num\">{peak}</td>\
             <td class=\"barcol\"><div class=\"bar {class}\" style=\"width:{width:.1}%\"></div></td></tr>",
            name_attr = attr(&o.name),
            name = text(&o.name),
            status_attr = attr(&status),
            status_text = text(&status),
            secs = runs::seconds(o.duration),
            cpu = o.usage.cpu.map_or_else(|| "-".into(), runs::seconds),
            peak = o.usage.peak_memory.map_or_else(|| "-".into(), runs::bytes),
        );
    }
    h.push_str("</tbody></table>\n");
}

/// Binary packages (`.gpkg.tar`, `.tbz2`, `.xpak`) in PKGDIR written since
/// the run started, and `Packages` if it changed: PKGDIR is shared, so a
/// run running at the same time may have written some of them.
fn packages(h: &mut String, record: &RunRecord) {
    if let Some(gen) = &record.binhost {
        generation(h, gen);
        return;
    }
    let Some(pkgdir) = record.pkgdir() else {
        return;
    };
    let mut found = Vec::new();
    collect_packages(pkgdir, pkgdir, record.start, &mut found, 0);
    found.sort();
    let _ = writeln!(
        h,
        "<h2>Packages</h2>\n<p>Written into <code>{}</code> since the run started \
         (a run at the same time writes there too).</p>",
        text(&pkgdir.display().to_string())
    );
    if found.is_empty() {
        h.push_str("<p id=\"packages-none\">none</p>\n");
        return;
    }
    h.push_str("<ul id=\"packages\">\n");
    for p in found {
        let _ = writeln!(h, "<li class=\"package\">{}</li>", text(&p));
    }
    h.push_str("</ul>\n");
}

/// A run with a binhost generation (`run --binhost`): the packages it
/// built (its generation against its parent) and the difference from the
/// generation published before it.
fn generation(h: &mut String, gen: &RunGeneration) {
    let host = Binhost::new(&gen.root);
    let published = host.current().ok().flatten();
    let state = if published.as_ref() == Some(&gen.generation) {
        "published: clients see it now"
    } else if host
        .meta(&gen.generation)
        .is_ok_and(|m| m.published.is_some())
    {
        "published once, not current"
    } else {
        "not published"
    };
    let _ = writeln!(
        h,
        "<h2>Packages</h2>\n<p>Generation <code id=\"generation\">{}</code> of <code>{}</code>, \
         made from <code>{}</code>: <span id=\"published\">{state}</span>.</p>",
        text(&gen.generation),
        text(&gen.root.display().to_string()),
        text(gen.parent.as_deref().unwrap_or("nothing")),
    );
    let built = gen.built.clone().unwrap_or_default();
    package_lists(h, "packages", &built);
    // The generation clients saw before this one: current, or if this one
    // is current, the one published before it.
    let history = host.history().unwrap_or_default();
    let before = match published {
        Some(p) if p == gen.generation => history
            .iter()
            .rev()
            .find(|g| **g != gen.generation)
            .cloned(),
        other => other,
    };
    let Some(before) = before else { return };
    let (Ok(old), Ok(new)) = (
        binhost::packages(&host.path(&before)),
        binhost::packages(&host.path(&gen.generation)),
    ) else {
        return;
    };
    let _ = writeln!(
        h,
        "<h3>Against the published generation <code>{}</code></h3>",
        text(&before)
    );
    package_lists(h, "against-published", &binhost::diff(&old, &new));
}

/// Added, rebuilt and removed packages as lists with ids `{id}`,
/// `{id}-rebuilt`, `{id}-removed`.
fn package_lists(h: &mut String, id: &str, d: &PackageDiff) {
    if d.is_empty() {
        let _ = writeln!(h, "<p id=\"{id}-none\">no change</p>");
        return;
    }
    for (suffix, title, list) in [
        ("", "Built (new)", &d.added),
        ("-rebuilt", "Rebuilt", &d.rebuilt),
        ("-removed", "Removed", &d.removed),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(h, "<p>{title}:</p>\n<ul id=\"{id}{suffix}\">");
        for cpv in list {
            let _ = writeln!(h, "<li class=\"package\">{}</li>", text(cpv));
        }
        h.push_str("</ul>\n");
    }
}

fn collect_packages(root: &Path, dir: &Path, since: u64, out: &mut Vec<String>, depth: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let path = e.path();
        if meta.is_dir() && depth < 4 {
            collect_packages(root, &path, since, out, depth + 1);
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let binpkg = [".gpkg.tar", ".tbz2", ".xpak"]
            .iter()
            .any(|x| name.ends_with(x));
        let changed = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|d| d.as_secs() >= since);
        if meta.is_file() && changed && (binpkg || name == "Packages") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
}

fn refused(h: &mut String, record: &RunRecord) {
    if record.refused.is_empty() {
        return;
    }
    h.push_str("<h2>Refused from the binhost</h2>\n<ul id=\"refused\">\n");
    for r in &record.refused {
        let _ = writeln!(
            h,
            "<li><code>{}</code>: {}; moved to <code>{}</code></li>",
            text(&r.path.display().to_string()),
            text(&r.reason.to_string()),
            text(&r.moved_to.display().to_string())
        );
    }
    h.push_str("</ul>\n");
}

fn logs(h: &mut String, run_path: &Path, outcomes: &[JobOutcome]) {
    h.push_str("<h2>Logs</h2>\n");
    for o in outcomes {
        let log = run_path.join(&o.name).join("log");
        let tail = log_tail(&log).unwrap_or_else(|e| format!("(no log: {e})"));
        let failed = !o.status.success();
        let _ = writeln!(
            h,
            "<details class=\"log\" id=\"log-{name_attr}\"{open}><summary>{name} — {status}</summary>\
             <p><a href=\"{name_attr}/log\">full log</a></p><pre>{tail}</pre></details>",
            name_attr = attr(&o.name),
            name = text(&o.name),
            status = text(&o.status.to_string()),
            open = if failed { " open" } else { "" },
            tail = text(&tail),
        );
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log, from a line start, lossily UTF-8.
fn log_tail(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if from > 0 {
        if let Some(nl) = s.find('\n') {
            s.drain(..=nl);
        }
        s.insert_str(0, "…\n");
    }
    Ok(s)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{padding:.25em .6em;text-align:left;\
border-bottom:1px solid #ddd}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.state{font-size:.6em;padding:.1em .5em;border-radius:.3em;vertical-align:middle}\
.ok{color:#075}.failed,.interrupted{color:#b00}.running{color:#a60}\
.state.ok{background:#dfd}.state.failed,.state.interrupted{background:#fdd}\
.barcol{width:30%}.bar{height:.8em;background:#7a7;min-width:1px}.bar.failed{background:#c66}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}code{font-size:.9em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logs_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut body = String::new();
        for i in 0..5000 {
            body.push_str(&format!("line {i}\n"));
        }
        fs::write(&log, &body).unwrap();
        let tail = log_tail(&log).unwrap();
        assert!(tail.starts_with("…\nline "), "{}", &tail[..20]);
        assert!(tail.ends_with("line 4999\n"));
        assert!(tail.len() as u64 <= LOG_TAIL_BYTES + 4);
        fs::write(&log, "short\n").unwrap();
        assert_eq!(log_tail(&log).unwrap(), "short\n");
    }
}
