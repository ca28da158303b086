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
