//! Making a generation's tree: every directory made again, every other
//! entry hard-linked, by several threads at once.
//!
//! The cost is one mkdir(2) per directory and one link(2) per file, and on
//! a journalled filesystem on a virtual disk each call mostly waits (for the
//! journal, the directory's lock, the disk), not computes. Threads working
//! on different directories overlap those waits: the work is a queue of
//! directories, each thread takes one, links its files, makes its
//! subdirectories and queues them. Two threads never write into the same
//! directory, so they never contend for its lock.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::{io, Error, Result};

/// How many threads make a generation by default: the calls wait more than
/// they compute, so more threads than CPUs still help (see the README's
/// binhost benchmark for the measurement behind the number).
pub const LINK_THREADS: usize = 8;

/// Make `dest` a copy of the tree `src` in which every directory is made
/// again (mode and owner kept) and every other entry is a hard link to
/// `src`'s; `skip` names entries at the top to leave out (and with it, any
/// name starting with `.` there). `threads` work at once (at least one,
/// the caller's). On error, what was made so far is left for the caller.
pub fn link_tree(src: &Path, dest: &Path, skip: &[&str], threads: usize) -> Result<()> {
    make_dir_like(src, dest)?;
    let work = Work {
        state: Mutex::new(State {
            pending: vec![(src.to_owned(), dest.to_owned(), true)],
            active: 0,
            error: None,
        }),
        changed: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 1..threads.max(1) {
            // A thread that cannot be made is one fewer: the caller's own
            // still does the work.
            let _ = std::thread::Builder::new().spawn_scoped(s, || work.run(skip));
        }
        work.run(skip);
    });
    let state = work
        .state
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    match state.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The queue of directories to link: (source, made destination, is the top).
struct Work {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    pending: Vec<(PathBuf, PathBuf, bool)>,
    /// Directories being linked now, whose subdirectories may yet be queued.
    active: usize,
    /// The first error: every thread stops at it.
    error: Option<Error>,
}

impl Work {
    /// One thread's share: take a directory, link it, queue what it holds,
    /// until nothing is queued or being linked, or something failed.
    fn run(&self, skip: &[&str]) {
        loop {
            let (src, dest, top) = {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if st.error.is_some() {
                        return;
                    }
                    if let Some(job) = st.pending.pop() {
                        st.active += 1;
                        break job;
                    }
                    if st.active == 0 {
                        return;
                    }
                    st = self
                        .changed
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let mut found = Vec::new();
            let linked = link_dir(&src, &dest, if top { skip } else { &[] }, &mut found);
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.active -= 1;
            match linked {
                Ok(()) => st.pending.extend(found),
                Err(e) => {
                    if st.error.is_none() {
                        st.error = Some(e);
                    }
                }
            }
            drop(st);
            self.changed.notify_all();
        }
    }
}

/// Link the entries of `src` into the made directory `dest`; subdirectories
/// are made and pushed to `found` for any thread to fill.
fn link_dir(
    src: &Path,
    dest: &Path,
    skip: &[&str],
    found: &mut Vec<(PathBuf, PathBuf, bool)>,
) -> Result<()> {
    for entry in fs::read_dir(src).map_err(io("reading", src))? {
        let entry = entry.map_err(io("reading", src))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if skip.contains(&name_str.as_ref()) || (!skip.is_empty() && name_str.starts_with('.')) {
            continue;
        }
        let from = entry.path();
        let to = dest.join(&name);
        if entry.file_type().map_err(io("reading", &from))?.is_dir() {
            make_dir_like(&from, &to)?;
            found.push((from, to, false));
        } else {
            // linkat without AT_SYMLINK_FOLLOW: a symlink is linked itself.
            fs::hard_link(&from, &to).map_err(io("linking", &to))?;
        }
    }
    Ok(())
}

fn make_dir_like(src: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let meta = fs::metadata(src).map_err(io("reading", src))?;
    let mode = meta.mode() & 0o7777;
    fs::DirBuilder::new()
        .mode(mode)
        .create(dest)
        .map_err(io("creating", dest))?;
    // Two calls fewer per directory where they change nothing (most of a
    // generation's: root-owned 0755), which is a third of making one.
    if (meta.uid(), meta.gid())
        != (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    {
        std::os::unix::fs::chown(dest, Some(meta.uid()), Some(meta.gid()))
            .map_err(io("changing the owner of", dest))?;
    }
    // The umask may have taken write bits, and mkdir ignores the setgid,
    // setuid and sticky bits; chown may have cleared setgid.
    if mode & 0o7022 != 0 {
        fs::set_permissions(dest, fs::Permissions::from_mode(mode))
            .map_err(io("changing the mode of", dest))?;
    }
    Ok(())
}
