//! A run handed to Slurm: the pinned spec and a batch script written into
//! the shared run directory, ONE array job submitted (`sbatch --array`,
//! one task per job, each running `portroot run-task DIR INDEX` on its
//! node, see [`super::task`]), the queue polled until no task is left, and
//! each task's result collected. SIGINT or SIGTERM cancels the array with
//! `scancel` and waits (bounded) until Slurm has let go of it.
//!
//! A task that wrote no result was killed by Slurm (time limit, node
//! failure, cancelled): its state and node come from `squeue`, which keeps
//! finished jobs for `MinJobAge` (300 s by default). Without accounting,
//! that is the only record there is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use portroot_runner::job::{JobOutcome, JobStatus};
use tracing::{debug, info};

use super::remote::{self, RemoteSpec};

/// How a run reaches Slurm and the nodes.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Where `sbatch`, `squeue` and `scancel` are; `None`: on PATH.
    pub bin_dir: Option<PathBuf>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Further sbatch arguments.
    pub sbatch_options: Vec<String>,
    /// The directory every node can write; the run lands in `SHARED/ID/`.
    pub shared_dir: PathBuf,
    /// The store the nodes use.
    pub node_store: PathBuf,
    /// The portroot binary on the nodes.
    pub portroot: PathBuf,
    /// How long to wait for the array before cancelling it; `None`: until
    /// Slurm ends every task.
    pub max_wait: Option<Duration>,
}

/// One job's end, as its task reported it or as Slurm saw it.
#[derive(Debug, Clone)]
pub struct RemoteOutcome {
    /// How the job went.
    pub outcome: JobOutcome,
    /// The node it ran on (`-` if it never started).
    pub node: String,
    /// What the node fetched for it.
    pub fetched: Vec<String>,
}

/// How a Slurm run went.
#[derive(Debug)]
pub struct SlurmRun {
    /// The run id.
    pub id: String,
    /// `SHARED/ID/`.
    pub dir: PathBuf,
    /// The array's Slurm job id.
    pub job_id: String,
    /// Every job, in the spec's order.
    pub results: Vec<RemoteOutcome>,
    /// The signal that cancelled the run, if any.
    pub signal: Option<i32>,
}

/// The shortest and longest pause between two looks at the queue: short at
/// first, so short runs end soon after their last task, then backing off
/// by a quarter each time, so a run ends at most a quarter late (and 1 s)
/// and a long one asks slurmctld once a second.
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Looks at the queue that may fail in a row (slurmctld restarting) before
/// the run gives up, cancelling the array.
const QUEUE_FAILURES: u32 = 10;

/// How long cancelled tasks may take to leave the queue.
const CANCEL_BOUND: Duration = Duration::from_secs(60);

/// Submit `spec` as one array job, wait until every task ended, collect.
/// Call before any thread is started (SIGINT and SIGTERM are blocked here
/// and taken by one thread).
pub fn submit(spec: &RemoteSpec, opts: &SlurmOptions) -> anyhow::Result<SlurmRun> {
    anyhow::ensure!(!spec.jobs.is_empty(), "no jobs to submit");
    let signal = take_signals()?;
    let dir = opts.shared_dir.join(&spec.id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    spec.save(&dir)?;
    for i in 0..spec.jobs.len() {
        let t = remote::task_dir(&dir, i);
        std::fs::create_dir_all(&t).with_context(|| format!("creating {}", t.display()))?;
    }
    let script = dir.join("job.sh");
    std::fs::write(&script, batch_script(opts, &dir))
        .with_context(|| format!("writing {}", script.display()))?;
    let job_id = sbatch(opts, spec, &dir, &script)?;
    info!(run = %spec.id, job = %job_id, tasks = spec.jobs.len(), "array submitted");
    let (states, sig) = wait(opts, &job_id, &signal)?;
    let results = (0..spec.jobs.len())
        .map(|i| collect(&dir, spec, i, states.get(&i)))
        .collect();
    Ok(SlurmRun {
        id: spec.id.clone(),
        dir,
        job_id,
        results,
        signal: sig,
    })
}

/// The script every task runs: the node's portroot on the node's store.
fn batch_script(opts: &SlurmOptions, dir: &Path) -> String {
    format!(
        "#!/bin/sh\n# Written by portroot run --scheduler slurm; one task per job.\n\
         exec {} --store {} run-task {} \"$SLURM_ARRAY_TASK_ID\"\n",
        shell_quote(&opts.portroot.to_string_lossy()),
        shell_quote(&opts.node_store.to_string_lossy()),
        shell_quote(&dir.to_string_lossy()),
    )
}

/// `s` in single quotes for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A Slurm client command.
fn client(opts: &SlurmOptions, name: &str) -> Command {
    let program = opts
        .bin_dir
        .as_ref()
        .map_or_else(|| PathBuf::from(name), |d| d.join(name));
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    c
}

/// Run a client command; its stdout, or its last stderr line as the error.
fn output(mut c: Command) -> anyhow::Result<String> {
    let out = c
        .output()
        .with_context(|| format!("running {}", c.get_program().to_string_lossy()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let last = crate::output::last_line(&out.stderr);
    bail!(
        "{} failed ({}): {}",
        c.get_program().to_string_lossy(),
        out.status,
        last
    )
}

fn sbatch(
    opts: &SlurmOptions,
    spec: &RemoteSpec,
    dir: &Path,
    script: &Path,
) -> anyhow::Result<String> {
    let mut c = client(opts, "sbatch");
    c.arg("--parsable")
        .arg(format!("--array=0-{}", spec.jobs.len() - 1))
        .arg(format!("--job-name=portroot-{}", spec.id))
        .arg(format!("--output={}/jobs/%a/slurm.out", dir.display()));
    if let Some(p) = &opts.partition {
        c.arg(format!("--partition={p}"));
    }
    if let Some(a) = &opts.account {
        c.arg(format!("--account={a}"));
    }
    c.args(&opts.sbatch_options).arg(script);
    let out = output(c).context("submitting the array job")?;
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let id = out.trim().split(';').next().unwrap_or("").to_owned();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sbatch printed no job id: {:?}", out.trim());
    }
    Ok(id)
}

/// A task's last state and node as squeue showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `COMPLETED`, `TIMEOUT`, `NODE_FAIL`, `CANCELLED`, ...
    pub state: String,
    /// Its node, if it had one.
    pub node: String,
}

/// States after which a task does nothing more.
fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
    )
}

/// Parse `squeue -h -t all -o '%K|%T|%N'`: each line one task (a pending
/// range shows as `[3-7]`, counted as not final).
fn parse_queue(text: &str) -> (BTreeMap<usize, TaskState>, usize) {
    let mut tasks = BTreeMap::new();
    let mut active = 0;
    for line in text.lines() {
        let mut f = line.split('|');
        let (Some(task), Some(state)) = (f.next(), f.next()) else {
            continue;
        };
        let node = f.next().unwrap_or("").trim().to_owned();
        let state = state.trim().to_owned();
        if !is_final(&state) {
            active += 1;
        }
        if let Ok(i) = task.trim().parse::<usize>() {
            tasks.insert(i, TaskState { state, node });
        }
    }
    (tasks, active)
}

/// Poll the queue until no task of `job_id` is active; on a signal, or past
/// `max_wait`, cancel the array and wait (bounded) for it to leave; past
/// `max_wait` that is an error. Without `max_wait` the wait is bounded by
/// Slurm alone: its time limits end running tasks, nothing ends pending ones.
fn wait(
    opts: &SlurmOptions,
    job_id: &str,
    signal: &AtomicI32,
) -> anyhow::Result<(BTreeMap<usize, TaskState>, Option<i32>)> {
    let mut pause = POLL_MIN;
    let mut failures = 0;
    let mut cancelled: Option<(i32, Instant)> = None;
    let started = Instant::now();
    let mut timed_out = false;
    loop {
        let mut sig = signal.load(Ordering::SeqCst);
        if sig == 0 && opts.max_wait.is_some_and(|m| started.elapsed() > m) {
            timed_out = true;
            sig = -1;
        }
        if sig != 0 && cancelled.is_none() {
            info!(job = %job_id, signal = sig, "cancelling the array");
            let mut c = client(opts, "scancel");
            c.arg(job_id);
            output(c).context("cancelling the array job")?;
            cancelled = Some((sig, Instant::now()));
            pause = POLL_MIN;
        }
        let (tasks, active) = match queue(opts, job_id) {
            Ok(q) => {
                failures = 0;
                q
            }
            Err(e) => {
                failures += 1;
                if failures >= QUEUE_FAILURES {
                    // Leave nothing running that nobody waits for.
                    let mut c = client(opts, "scancel");
                    c.arg(job_id);
                    let _ = output(c);
                    return Err(e.context(format!("array job {job_id} cancelled")));
                }
                tracing::warn!(job = %job_id, error = %format!("{e:#}"), "reading the queue");
                std::thread::sleep(POLL_MAX);
                continue;
            }
        };
        debug!(job = %job_id, active, "queue");
        if active == 0 {
            if timed_out {
                bail!(
                    "array job {job_id} not done within slurm.max_wait ({} s): cancelled",
                    opts.max_wait.unwrap_or_default().as_secs()
                );
            }
            return Ok((tasks, cancelled.map(|(s, _)| s)));
        }
        if let Some((_, at)) = cancelled {
            if at.elapsed() > CANCEL_BOUND {
                bail!(
                    "array job {job_id} still has {active} task(s) {CANCEL_BOUND:?} after scancel"
                );
            }
        }
        std::thread::sleep(pause);
        pause = (pause + pause / 4).min(POLL_MAX);
    }
}

/// The array's tasks as squeue shows them, and how many are still active.
/// A job squeue no longer knows (purged after `MinJobAge`) has none active.
fn queue(opts: &SlurmOptions, job_id: &str) -> anyhow::Result<(BTreeMap<usize, TaskState>, usize)> {
    let mut c = client(opts, "squeue");
    c.args(["-h", "-t", "all", "-j", job_id, "-o", "%K|%T|%N"]);
    match output(c) {
        Ok(text) => Ok(parse_queue(&text)),
        Err(e) if format!("{e:#}").contains("Invalid job id") => Ok((BTreeMap::new(), 0)),
        Err(e) => Err(e.context("reading the queue")),
    }
}

/// Job `index`'s outcome: its task's result, else what Slurm says of it.
fn collect(
    dir: &Path,
    spec: &RemoteSpec,
    index: usize,
    state: Option<&TaskState>,
) -> RemoteOutcome {
    if let Some(r) = remote::load_result(dir, index) {
        let mut outcome = r.outcome;
        // Slurm ends a task over its time limit (or preempted) with SIGTERM
        // to every process of it: the job records `signal 15` or the run a
        // cancel. Say who ended it.
        if let Some(s) = state.filter(|s| killed_by_slurm(&s.state)) {
            if !outcome.status.success() {
                outcome.status = killed(&s.state);
            }
        }
        return RemoteOutcome {
            outcome,
            node: r.node,
            fetched: r.fetched,
        };
    }
    let name = spec.jobs[index].name.clone();
    let (status, node) = match state {
        Some(s) if s.state == "CANCELLED" => (JobStatus::Cancelled, s.node.clone()),
        Some(s) => (killed(&s.state), s.node.clone()),
        None => (
            JobStatus::Error("no result and no trace in the queue".into()),
            String::new(),
        ),
    };
    let slurm_out = remote::task_dir(dir, index).join("slurm.out");
    RemoteOutcome {
        outcome: JobOutcome {
            name,
            status,
            duration: Duration::ZERO,
            log: if slurm_out.exists() {
                slurm_out
            } else {
                PathBuf::new()
            },
            usage: Default::default(),
        },
        node: if node.is_empty() { "-".into() } else { node },
        fetched: Vec::new(),
    }
}

/// Final states in which Slurm, not the task, ended the task.
fn killed_by_slurm(state: &str) -> bool {
    is_final(state) && !matches!(state, "COMPLETED" | "FAILED" | "CANCELLED")
}

/// The status of a task Slurm ended in `state`.
fn killed(state: &str) -> JobStatus {
    JobStatus::Error(format!("killed by slurm: {}", state.to_lowercase()))
}

/// Block SIGINT and SIGTERM in this thread (and every thread it starts;
/// std gives children a clean mask) and let one thread record which came.
fn take_signals() -> anyhow::Result<Arc<AtomicI32>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT and SIGTERM")?;
    let signal = Arc::new(AtomicI32::new(0));
    let seen = signal.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                seen.store(sig as i32, Ordering::SeqCst);
            }
        })
        .context("starting the signal thread")?;
    Ok(signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lines_give_each_task_and_count_the_active() {
        let text = "3|RUNNING|node1\n0|COMPLETED|node1\n1|TIMEOUT|node2\n[4-7]|PENDING|\n";
        let (tasks, active) = parse_queue(text);
        assert_eq!(active, 2);
        assert_eq!(tasks[&1].state, "TIMEOUT");
        assert_eq!(tasks[&1].node, "node2");
        assert!(!tasks.contains_key(&4));
        assert_eq!(parse_queue("").1, 0);
    }

    #[test]
    fn a_task_without_a_result_shows_how_slurm_ended_it() {
        use portroot_runner::job::Job;
        let tmp = tempfile::tempdir().unwrap();
        let spec = RemoteSpec {
            id: "r".into(),
            stage: portroot_runner::digest::StageDigest::parse(&"a".repeat(64)).unwrap(),
            stage_url: None,
            tree_remote: None,
            trees: Vec::new(),
            layers: Vec::new(),
            settings: remote::Shipped {
                layout: portroot_runner::conf::TreeLayout::Modern,
                network: portroot_runner::sandbox::Network::Host,
                local_mirror: None,
                features: Vec::new(),
                make_conf_lines: Vec::new(),
                distfiles: "/d".into(),
                binpkgs: "/b".into(),
                limits: Default::default(),
                tmpfs: Vec::new(),
            },
            jobs: vec![Job {
                name: "j".into(),
                script: "true".into(),
            }],
            retry_of: None,
        };
        let state = |s: &str| TaskState {
            state: s.into(),
            node: "node7".into(),
        };
        let timed_out = collect(tmp.path(), &spec, 0, Some(&state("TIMEOUT")));
        assert_eq!(
            timed_out.outcome.status.to_string(),
            "error: killed by slurm: timeout"
        );
        assert_eq!(timed_out.node, "node7");
        let cancelled = collect(tmp.path(), &spec, 0, Some(&state("CANCELLED")));
        assert_eq!(cancelled.outcome.status, JobStatus::Cancelled);
        let lost = collect(tmp.path(), &spec, 0, None);
        assert_eq!(lost.node, "-");
        assert!(!lost.outcome.status.success());
    }

    #[test]
    fn batch_script_quotes_every_path() {
        let opts = SlurmOptions {
            bin_dir: None,
            partition: None,
            account: None,
            sbatch_options: Vec::new(),
            shared_dir: "/srv/runs".into(),
            node_store: "/var/lib/it's".into(),
            portroot: "/usr/bin/portroot".into(),
            max_wait: None,
        };
        let s = batch_script(&opts, Path::new("/srv/runs/x"));
        assert!(s.contains("exec '/usr/bin/portroot' --store '/var/lib/it'\\''s' run-task '/srv/runs/x' \"$SLURM_ARRAY_TASK_ID\""), "{s}");
    }
}
