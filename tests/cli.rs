//! The command line itself: help, version, usage errors.

use crate::util;

#[test]
fn help_lists_every_subcommand() {
    let out = util::ok(std::process::Command::new(util::bin()).arg("--help"));
    for sub in [
        "snapshot", "mount", "umount", "stage", "run", "shell", "ps", "gc",
    ] {
        assert!(out.contains(sub), "--help does not mention {sub}:\n{out}");
    }
    assert!(!out.contains("internal"), "hidden helper leaks into --help");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let err = util::fails(std::process::Command::new(util::bin()).arg("frobnicate"), 2);
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let bash = util::ok(std::process::Command::new(util::bin()).args(["completions", "bash"]));
    assert!(
        bash.contains("portroot") && bash.contains("snapshot"),
        "{bash}"
    );
    let man = util::ok(std::process::Command::new(util::bin()).arg("man"));
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    assert!(man.contains("portroot"));
}

#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    // `portroot ... | head` once the reader has gone: the first write meets a
    // closed pipe. The command must end as git does (SIGPIPE, or success),
    // never with a panic or an error line.
    let store = tempfile::tempdir().expect("store");
    for args in [
        &["completions", "bash"][..],
        &["man"],
        &["--no-config", "config", "example"],
        &["stage", "list"],
        &["layer", "list"],
    ] {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let out = util::portroot(store.path())
            .args(args)
            .stdout(std::process::Stdio::from(writer))
            .output()
            .expect("spawn portroot");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {}\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?} printed:\n{stderr}"
        );
    }
}

#[test]
fn counts_and_names_out_of_range_are_usage_errors() {
    // Wrong command lines exit 2 (clap's usage errors), before anything is
    // looked up in the store.
    let store = tempfile::tempdir().expect("store");
    for args in [
        &[
            "run", "--stage", "s", "--tag", "t", "--jobs", "0", "--", "true",
        ][..],
        &[
            "run", "--stage", "s", "--tag", "t", "--repeat", "0", "--", "true",
        ],
        &["demo", "--jobs", "0"],
        &["stage", "add", "x.tar", "--name", "../x"],
        &["snapshot", "list", "--repo", "../../x"],
        &["mount", "--repo", ".hidden", "--all", "/nonexistent"],
        &["layer", "create", "a/b", "--stage", "s", "--", "true"],
    ] {
        let err = util::fails(util::portroot(store.path()).args(args), 2);
        assert!(err.contains("invalid value"), "{args:?}: {err}");
    }
}
