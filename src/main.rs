//! The `portroot` command line: parses arguments, sets up logging, dispatches to
//! the subcommands in `cmd/`, and turns their outcome into an exit status that
//! scripts can trust:
//!
//! * `0`: done (including "no newer snapshot");
//! * `1`: the command failed; one line on stderr says what and where;
//! * `2`: the command line itself was wrong (clap's usage errors), or a
//!   configuration file is (one line: `FILE:LINE:COLUMN: what`).

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use portroot::store::{Store, DEFAULT_STORE};
use tracing_subscriber::EnvFilter;

/// portroot: reproducible Gentoo build chroots, fast.
///
/// Imports verified portage snapshots into git (one commit and tag per date),
/// serves any tag read-only straight from git objects over FUSE, unpacks stage
/// tarballs once and gives every build chroot a copy-on-write overlay, and runs
/// many chroots in parallel, collecting their binary packages.
#[derive(Debug, Parser)]
#[command(
    name = "portroot",
    version,
    propagate_version = true,
    after_help = "Examples:\n  portroot snapshot sync\n  portroot snapshot import gentoo-20260820.tar.xz\n  portroot mount --tag 2026-08-20 /mnt/gentoo\n  portroot stage add stage4-amd64.tar.xz --name stage4\n  portroot run --stage stage4 --tag 2026-08-20 --jobs 8 -- emerge -e world\n  portroot snapshot push git@mirror.example:gentoo-snapshots.git\n\nDefaults come from /etc/portroot/portroot.toml (or --config) and STORE/config.toml;\nsee `portroot config example` and `portroot config show`."
)]
struct Cli {
    /// The store directory (repositories, stages, layers, runs, binpkgs).
    #[arg(long, global = true, env = "PORTROOT_STORE", default_value = DEFAULT_STORE, value_name = "DIR")]
    store: PathBuf,

    /// More log output (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

    /// Less output: no progress bars, only errors and final summaries.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// The configuration file [default: /etc/portroot/portroot.toml if it
    /// exists]; STORE/config.toml overrides it key by key, flags override both.
    #[arg(long, global = true, env = "PORTROOT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Read no configuration file (not even --config's): built-in defaults
    /// and flags only.
    #[arg(
        long,
        global = true,
        env = "PORTROOT_NO_CONFIG",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_config: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync, import, list, compare, push and fetch portage snapshots kept as git tags.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCmd),
    /// Serve a tag (or every tag side by side) read-only from git objects.
    Mount(cmd::mount::MountArgs),
    /// Unmount a tree mounted by `portroot mount` and stop its daemon.
    Umount(cmd::mount::UmountArgs),
    /// Add, list, remove and export stage tarballs unpacked once into the store.
    #[command(subcommand)]
    Stage(cmd::stage::StageCmd),
    /// Keep a job's changes as a named layer that later chroots stack over the stage.
    #[command(subcommand)]
    Layer(cmd::layer::LayerCmd),
    /// Run build jobs in parallel chroots over a stage and a snapshot tag.
    Run(cmd::run::RunArgs),
    /// Open an interactive shell in a chroot set up like a run's.
    Shell(cmd::run::ShellArgs),
    /// List live runs.
    Ps(cmd::runs::PsArgs),
    /// List every run the store keeps: when, over what, how it went.
    Runs(cmd::runs::RunsArgs),
    /// List, publish, roll back, compare and collect a binhost's generations.
    #[command(subcommand)]
    Binhost(cmd::binhost::BinhostCmd),
    /// Write a run's report page (runs/ID/index.html) again and print its path.
    Report(cmd::runs::ReportArgs),
    /// Remove what killed runs left behind in the store.
    Gc(cmd::runs::GcArgs),
    /// Show the effective configuration, or print an example file.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    /// Run the whole workflow on built-in demo data, offline (as root).
    Demo(cmd::demo::DemoArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(
        after_help = "Example:\n  portroot completions bash > /usr/share/bash-completion/completions/portroot"
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(
        after_help = "Example:\n  portroot man > /usr/share/man/man1/portroot.1 && man portroot"
    )]
    Man,
    /// Internal: one job of a run handed to Slurm, on the node it landed on.
    #[command(hide = true)]
    RunTask(cmd::slurm::RunTaskArgs),
    /// Internal: the single-threaded helper that sets up one sandbox.
    #[command(hide = true, subcommand)]
    Internal(cmd::run::InternalCmd),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let store_given = !matches!(
        matches.value_source("store"),
        None | Some(clap::parser::ValueSource::DefaultValue)
    );
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    init_logging(cli.verbose, cli.quiet);
    if only_prints(&cli.command) {
        end_quietly_on_closed_pipe();
    }
    // Commands that take no defaults must work whatever the files say: the
    // sandbox helper and the shell's generated completions above all.
    let needs_config = !cli.no_config
        && !matches!(
            cli.command,
            Command::Internal(_) | Command::Completions { .. } | Command::Man
        );
    let config = if needs_config {
        match portroot::config::Loaded::load(
            cli.config.as_deref(),
            std::path::Path::new(portroot::config::SITE_CONFIG),
            &cli.store,
        ) {
            Ok(loaded) => loaded,
            Err(err) => {
                eprintln!("portroot: {:#}", anyhow::Error::from(err));
                return ExitCode::from(2);
            }
        }
    } else {
        portroot::config::Loaded::default()
    };
    let ctx = cmd::Ctx {
        store: Store::new(&cli.store),
        quiet: cli.quiet,
        store_given,
        config,
    };
    let result = match cli.command {
        Command::Snapshot(c) => cmd::snapshot::run(&ctx, c),
        Command::Mount(a) => cmd::mount::mount(&ctx, a),
        Command::Umount(a) => cmd::mount::umount(&ctx, a),
        Command::Stage(c) => cmd::stage::run(&ctx, c),
        Command::Layer(c) => cmd::layer::run(&ctx, c),
        Command::Run(a) => cmd::slurm::run(&ctx, a),
        Command::Shell(a) => cmd::run::shell(&ctx, a),
        Command::Ps(a) => cmd::runs::ps(&ctx, a),
        Command::Runs(a) => cmd::runs::runs(&ctx, a),
        Command::Report(a) => cmd::runs::report(&ctx, a),
        Command::Binhost(c) => cmd::binhost::run(&ctx, c),
        Command::Gc(a) => cmd::runs::gc(&ctx, a),
        Command::Internal(c) => cmd::run::internal(&ctx, c),
        Command::RunTask(a) => cmd::slurm::run_task(&ctx, a),
        Command::Config(c) => cmd::config::run(&ctx, c),
        Command::Demo(a) => cmd::demo::demo(&ctx, a),
        Command::Completions { shell } => print_completions(shell),
        Command::Man => print_man(),
    };
    cmd::signals::wait_if_interrupted();
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line, whatever names (of files, of tar entries) it quotes.
            eprintln!("portroot: error: {}", one_line(&format!("{err:#}")));
            ExitCode::from(1)
        }
    }
}

/// `text` with its control characters (a newline in a file name) escaped as
/// in Rust strings, so that an error is always one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Whether the command only reads and prints: those end the way git and
/// ripgrep do when the reader of their output goes away (`| head`).
fn only_prints(command: &Command) -> bool {
    use cmd::{config::ConfigCmd, layer::LayerCmd, snapshot::SnapshotCmd, stage::StageCmd};
    matches!(
        command,
        Command::Snapshot(SnapshotCmd::List(_) | SnapshotCmd::Diff(_))
            | Command::Stage(StageCmd::List)
            | Command::Layer(LayerCmd::List(_))
            | Command::Config(ConfigCmd::Show | ConfigCmd::Example)
            | Command::Ps(_)
            | Command::Runs(_)
            | Command::Binhost(
                cmd::binhost::BinhostCmd::List { .. } | cmd::binhost::BinhostCmd::Diff { .. }
            )
            | Command::Completions { .. }
            | Command::Man
    )
}

/// Let a write to a closed pipe end the process by SIGPIPE, silently, as
/// git does, instead of Rust's default (the signal ignored, `println!`
/// panicking on EPIPE with exit 101). Only for the commands that hold
/// nothing to clean up: a run or an import must never die half-way on a
/// closed terminal pipe, so they keep the default.
fn end_quietly_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler
    // code; this runs before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// `portroot completions SHELL`: generated from the clap definition, so they
/// never drift from the real flags.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "portroot", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `portroot man`: the man page, generated from the clap definition.
fn print_man() -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("writing the man page to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Install the one tracing subscriber: `RUST_LOG` if set, else `-v` levels.
fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    tracing_subscriber::registry()
        .with(InterruptedReplies)
        .with(filter)
        .with(fmt)
        .init();
}

/// Drops fuser's `Failed to send FUSE reply: ... (os error 2)`. The kernel
/// answers a reply with ENOENT when the request is no longer pending: its
/// caller was interrupted or killed while the daemon worked on it (a job's
/// processes dying with its PID namespace, portage's pid-sandbox killing
/// strays). libfuse ignores exactly this error for that reason (`fuse_send_msg`
/// in lib/fuse_lowlevel.c: "ENOENT means the operation was interrupted");
/// fuser logs it at error level, which put an ERROR line on `portroot run`'s
/// output now and then. Every other send failure still shows.
struct InterruptedReplies;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for InterruptedReplies {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // fuser logs through the `log` crate: the target and message arrive
        // as fields of the bridged event.
        #[derive(Default)]
        struct Fields {
            target: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "log.target" {
                    value.clone_into(&mut self.target);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() != tracing::Level::ERROR {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        !is_interrupted_reply(&fields.target, &fields.message)
    }
}

/// Whether a log line is fuser's report of a reply to a request the kernel
/// no longer holds (see [`InterruptedReplies`]).
fn is_interrupted_reply(target: &str, message: &str) -> bool {
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    target.starts_with("fuser::")
        && message.starts_with("Failed to send FUSE reply")
        && message.ends_with(&enoent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fusers_enoent_reply_failures_are_dropped() {
        let send = "Failed to send FUSE reply";
        assert!(is_interrupted_reply(
            "fuser::reply",
            &format!("{send}: No such file or directory (os error 2)")
        ));
        assert!(!is_interrupted_reply(
            "fuser::reply",
            &format!("{send}: Bad file descriptor (os error 9)")
        ));
        assert!(!is_interrupted_reply(
            "portroot_fs",
            &format!("{send}: No such file or directory (os error 2)")
        ));
    }

    /// Counts the events that reach it.
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            _event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn bridged_enoent_reply_failure_never_reaches_the_output() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(InterruptedReplies)
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // The fields tracing-log gives an event bridged from `log`.
            tracing::error!(
                log.target = "fuser::reply",
                "Failed to send FUSE reply: No such file or directory (os error 2)"
            );
            tracing::error!(
                log.target = "fuser::reply",
                "Failed to send FUSE reply: Bad file descriptor (os error 9)"
            );
            tracing::warn!("mount busy, detaching lazily");
        });
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
