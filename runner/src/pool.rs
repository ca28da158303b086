//! The job pool: a fixed set of worker threads taking jobs from a channel
//! (ripgrep's worker model) and reporting [`Event`]s back to the caller's
//! thread, which draws progress.
//!
//! Workers never touch namespaces or mounts: the work function they call only
//! spawns and waits for a child process (the sandbox helper). Since
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, a
//! worker must outlive every child it started: it waits for each before it
//! takes the next job, and only returns once the queue is empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use crate::job::{Job, JobOutcome, JobStatus};

/// What the pool reports while it runs.
#[derive(Debug)]
pub enum Event {
    /// A worker picked up this job.
    Started(String),
    /// A job ended.
    Finished(JobOutcome),
}

/// Run `jobs` on `workers` threads, calling `work` for each and `on_event` on
/// the caller's thread for every start and finish. Once `cancel` is set,
/// queued jobs are reported as [`JobStatus::Cancelled`] without running.
/// Returns the outcomes in the jobs' order.
pub fn run<W, E>(
    jobs: Vec<Job>,
    workers: usize,
    cancel: &AtomicBool,
    work: W,
    mut on_event: E,
) -> Vec<JobOutcome>
where
    W: Fn(&Job) -> JobOutcome + Sync,
    E: FnMut(&Event),
{
    let order: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let workers = workers.clamp(1, jobs.len().max(1));
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    for job in jobs {
        job_tx
            .send(job)
            .expect("invariant: the receiver lives in this scope");
    }
    drop(job_tx);
    let job_rx = Mutex::new(job_rx);
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let work = &work;
    let job_rx = &job_rx;

    let mut outcomes = Vec::with_capacity(order.len());
    std::thread::scope(|s| {
        for i in 0..workers {
            let ev_tx = ev_tx.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn_scoped(s, move || loop {
                    // A poisoned lock means another worker panicked: stop taking work.
                    let next = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = next else { return };
                    let outcome = if cancel.load(Ordering::SeqCst) {
                        JobOutcome {
                            name: job.name.clone(),
                            status: JobStatus::Cancelled,
                            duration: Default::default(),
                            log: Default::default(),
                            usage: Default::default(),
                        }
                    } else {
                        let _ = ev_tx.send(Event::Started(job.name.clone()));
                        work(&job)
                    };
                    let _ = ev_tx.send(Event::Finished(outcome));
                })
                .expect("invariant: spawning a worker thread");
        }
        drop(ev_tx);
        for ev in ev_rx {
            on_event(&ev);
            if let Event::Finished(o) = ev {
                outcomes.push(o);
            }
        }
    });
    outcomes.sort_by_key(|o| order.iter().position(|n| *n == o.name));
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::repeated;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn outcome(job: &Job, status: JobStatus) -> JobOutcome {
        JobOutcome {
            name: job.name.clone(),
            status,
            duration: Duration::ZERO,
            log: "log".into(),
            usage: Default::default(),
        }
    }

    #[test]
    fn every_job_runs_once_and_outcomes_keep_job_order() {
        let ran = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        let mut started = 0;
        let outs = run(
            repeated("x", 20),
            4,
            &cancel,
            |job| {
                ran.fetch_add(1, Ordering::SeqCst);
                let code = if job.name == "7" { 3 } else { 0 };
                outcome(job, JobStatus::Exited(code))
            },
            |ev| {
                if let Event::Started(_) = ev {
                    started += 1;
                }
            },
        );
        assert_eq!(ran.load(Ordering::SeqCst), 20);
        assert_eq!(started, 20);
        let names: Vec<_> = outs.iter().map(|o| o.name.clone()).collect();
        assert_eq!(names, (1..=20).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(outs[6].status, JobStatus::Exited(3));
        assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 19);
    }

    #[test]
    fn at_most_workers_jobs_run_at_once() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        run(
            repeated("x", 12),
            3,
            &cancel,
            |job| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                outcome(job, JobStatus::Exited(0))
            },
            |_| {},
        );
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn cancel_skips_queued_jobs() {
        let cancel = AtomicBool::new(false);
        let outs = run(
            repeated("x", 10),
            1,
            &cancel,
            |job| {
                cancel.store(true, Ordering::SeqCst);
                outcome(job, JobStatus::Exited(0))
            },
            |_| {},
        );
        assert_eq!(outs[0].status, JobStatus::Exited(0));
        assert!(outs[1..].iter().all(|o| o.status == JobStatus::Cancelled));
    }
}
