//! Jobs: what runs in one chroot, and how it went.
//!
//! A job is a name (its hostname and its directory under `runs/<id>/`) and a
//! bash script. The script comes from the words after `--` ([`script_from_words`]),
//! `--repeat N` ([`repeated`]) or a job file ([`parse_job_file`]). A finished
//! job is a [`JobOutcome`] value, never a panic or an error that stops the run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup::Usage;
use crate::error::{Error, Result};

/// One unit of work: a script run in its own chroot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique within the run; a valid hostname label and directory name.
    pub name: String,
    /// Given to `bash --login -c`.
    pub script: String,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// The script exited with this status (0 is success); `128 + N` if a
    /// signal N killed it.
    Exited(i32),
    /// The kernel's OOM killer killed a process of the job (it hit its
    /// memory limit) and the job failed.
    Oom,
    /// The sandbox could not be set up; the reason is in the log.
    SetupFailed,
    /// The run was interrupted before or while the job ran.
    Cancelled,
    /// The runner could not start the job (the message says why).
    Error(String),
}

impl JobStatus {
    /// Whether the job succeeded.
    pub fn success(&self) -> bool {
        *self == JobStatus::Exited(0)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobStatus::Exited(0) => write!(f, "ok"),
            JobStatus::Exited(code) if *code > 128 => write!(f, "signal {}", code - 128),
            JobStatus::Exited(code) => write!(f, "exit {code}"),
            JobStatus::Oom => write!(f, "oom"),
            JobStatus::SetupFailed => write!(f, "setup failed"),
            JobStatus::Cancelled => write!(f, "cancelled"),
            JobStatus::Error(msg) => write!(f, "error: {msg}"),
        }
    }
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job's name.
    pub name: String,
    /// How it ended.
    pub status: JobStatus,
    /// Wall time from spawn to exit.
    pub duration: Duration,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// What it used, as its cgroup counted (empty without one).
    #[serde(default)]
    pub usage: Usage,
}

impl JobOutcome {
    /// The job's `status` file: the status on the first line, then what
    /// the job used, one `key value` a line (keys only when counted).
    pub fn status_record(&self) -> String {
        let mut out = format!("{}\n", self.status);
        if let Some(cpu) = self.usage.cpu {
            out.push_str(&format!("cpu_seconds {:.3}\n", cpu.as_secs_f64()));
        }
        if let Some(peak) = self.usage.peak_memory {
            out.push_str(&format!("peak_memory_bytes {peak}\n"));
        }
        if self.usage.oom_kills > 0 {
            out.push_str(&format!("oom_kills {}\n", self.usage.oom_kills));
        }
        out
    }
}

/// The script for the words after `--`: one word is taken as is (it may be a
/// whole shell line such as `'emerge -e world && eclean-pkg'`), several are
/// joined shell-quoted so each stays one argument.
pub fn script_from_words(words: &[String]) -> Result<String> {
    match words {
        [] => Err(Error::Invalid("no command given after --".into())),
        [one] => Ok(one.clone()),
        many => shlex::try_join(many.iter().map(String::as_str))
            .map_err(|e| Error::Invalid(format!("cannot quote the command: {e}"))),
    }
}

/// `n` jobs named `1`..`n` running `script`.
pub fn repeated(script: &str, n: usize) -> Vec<Job> {
    (1..=n)
        .map(|i| Job {
            name: i.to_string(),
            script: script.to_owned(),
        })
        .collect()
}

/// Parse a job file: one `NAME<TAB>COMMAND` per line; blank lines and lines
/// starting with `#` are skipped. `path` only names the file in errors.
pub fn parse_job_file(text: &str, path: &Path) -> Result<Vec<Job>> {
    let mut jobs: Vec<Job> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| Error::JobFile {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, script)) = line.split_once('\t') else {
            return Err(bad("expected NAME<TAB>COMMAND".into()));
        };
        check_job_name(name).map_err(bad)?;
        if script.trim().is_empty() {
            return Err(bad(format!("job {name} has no command")));
        }
        if jobs.iter().any(|j| j.name == name) {
            return Err(bad(format!("job {name} appears twice")));
        }
        jobs.push(Job {
            name: name.to_owned(),
            script: script.to_owned(),
        });
    }
    if jobs.is_empty() {
        return Err(Error::Invalid(format!(
            "job file {} has no jobs",
            path.display()
        )));
    }
    Ok(jobs)
}

/// Names the run directory uses itself (see `run.rs`).
const RESERVED: &[&str] = &["repos", "lock", "run.json"];

/// A job name becomes a hostname and a directory: 1-63 of `[A-Za-z0-9._-]`,
/// not starting with `.` or `-`.
pub fn check_job_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if RESERVED.contains(&name) {
        return Err(format!(
            "job name {name:?} is reserved (the run directory uses it)"
        ));
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid job name {name:?} (use 1-63 letters, digits, '.', '_' or '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_word_is_taken_as_is() {
        let s = script_from_words(&words(&["emerge -e world && eclean-pkg"])).unwrap();
        assert_eq!(s, "emerge -e world && eclean-pkg");
    }

    #[test]
    fn several_words_are_shell_quoted() {
        let s = script_from_words(&words(&["echo", "a b", "it's", "$HOME"])).unwrap();
        assert_eq!(
            shlex::split(&s).unwrap(),
            words(&["echo", "a b", "it's", "$HOME"])
        );
        assert!(!s.contains(" $HOME"), "$HOME must not expand: {s}");
    }

    #[test]
    fn no_words_is_an_error() {
        assert!(script_from_words(&[]).is_err());
    }

    #[test]
    fn repeat_names_jobs_from_one() {
        let jobs = repeated("true", 3);
        let names: Vec<_> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["1", "2", "3"]);
    }

    #[test]
    fn job_file_parses_names_and_commands() {
        let text = "# packages\nbash\temerge -1 app-shells/bash\n\nzlib\temerge -1 sys-libs/zlib && echo 'x\ty'\n";
        let jobs = parse_job_file(text, Path::new("jobs.txt")).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].name, "zlib");
        assert_eq!(jobs[1].script, "emerge -1 sys-libs/zlib && echo 'x\ty'");
    }

    #[test]
    fn job_file_errors_name_file_and_line() {
        let cases = [
            ("a\ttrue\nnotab\n", "jobs.txt:2: expected NAME<TAB>COMMAND"),
            ("../x\ttrue\n", "jobs.txt:1: invalid job name"),
            ("a\ttrue\na\tfalse\n", "jobs.txt:2: job a appears twice"),
            ("a\t  \n", "jobs.txt:1: job a has no command"),
            (
                "repos\ttrue\n",
                "jobs.txt:1: job name \"repos\" is reserved",
            ),
        ];
        for (text, want) in cases {
            let err = parse_job_file(text, Path::new("jobs.txt"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
        assert!(parse_job_file("# nothing\n", Path::new("-")).is_err());
    }

    #[test]
    fn status_record_has_the_status_first_then_usage() {
        let mut o = JobOutcome {
            name: "a".into(),
            status: JobStatus::Oom,
            duration: Duration::ZERO,
            log: "log".into(),
            usage: Usage::default(),
        };
        assert_eq!(o.status_record(), "oom\n");
        o.usage = Usage {
            cpu: Some(Duration::from_millis(1500)),
            peak_memory: Some(4096),
            oom_kills: 1,
        };
        assert_eq!(
            o.status_record(),
            "oom\ncpu_seconds 1.500\npeak_memory_bytes 4096\noom_kills 1\n"
        );
    }

    #[test]
    fn status_display() {
        assert_eq!(JobStatus::Exited(0).to_string(), "ok");
        assert_eq!(JobStatus::Exited(3).to_string(), "exit 3");
        assert_eq!(JobStatus::Exited(137).to_string(), "signal 9");
        assert_eq!(JobStatus::Oom.to_string(), "oom");
        assert!(!JobStatus::SetupFailed.success());
    }
}
