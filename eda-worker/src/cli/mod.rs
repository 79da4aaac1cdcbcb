//! The `worker` command. An app's `src/bin/worker.rs` is one line:
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     eda_worker::cli::main().await
//! }
//! ```
//!
//! `worker dlq list|replay|purge QUEUE` works on a job queue's dead letters
//! (the library side is [`crate::dead_letter`]).
//!
//! The CLI owns the signals: the first SIGTERM or SIGINT starts a graceful
//! stop, a second one exits at once with status 130.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod broker;
mod database;
mod dead_letter;
mod jobs;
mod log_fields;
mod outbox;
mod relay;
mod run;
mod signals;
mod table;
mod topology;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Runs the eda-worker jobs linked into this binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the job queues until SIGTERM or SIGINT.
    Run(run::RunArgs),
    /// List the registered jobs.
    Jobs,
    /// List, replay or purge the dead letters of a job queue (QUEUE.dlq).
    #[command(subcommand)]
    Dlq(dead_letter::DlqCommand),
    /// Create or update eda-worker's tables in PostgreSQL.
    Migrate(database::DatabaseArgs),
    /// Publish the outbox to RabbitMQ until SIGTERM or SIGINT (without consuming jobs).
    Relay(relay::RelayArgs),
    /// The transactional outbox.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// The broker objects the jobs need.
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
}

/// Why a command failed: the library's errors, and the CLI's own.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    /// The library failed.
    #[error(transparent)]
    Library(#[from] crate::Error),
    /// `dlq purge` without `--yes`, with no terminal to ask on.
    #[error(
        "refusing to purge `{queue}` without confirmation: stdin is not a terminal; pass --yes to purge"
    )]
    PurgeNotConfirmed {
        /// The dead-letter queue.
        queue: String,
    },
    /// The purge question could not be asked or answered.
    #[error("could not ask for confirmation on the terminal; pass --yes to purge without asking")]
    Prompt(#[source] std::io::Error),
    /// Dead letters could not be written as JSON.
    #[error("could not write the result as JSON")]
    Json(#[source] serde_json::Error),
}

/// Parses the command line and runs the `worker` command.
pub async fn main() -> ExitCode {
    init_tracing();
    redact_panics();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run::run(args).await.map_err(CommandError::from),
        Command::Jobs => jobs::list_jobs().map_err(CommandError::from),
        Command::Dlq(command) => dead_letter::run(command).await,
        Command::Migrate(args) => database::migrate(args).await.map_err(CommandError::from),
        Command::Relay(args) => relay::relay(args).await.map_err(CommandError::from),
        Command::Outbox(outbox::OutboxCommand::Status { database, json }) => {
            outbox::outbox_status(database, json).await
        }
        Command::Topology(command) => topology::run(command).await.map_err(CommandError::from),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", crate::error::error_chain_text(&error));
            ExitCode::FAILURE
        }
    }
}

/// Redacts URL passwords in panic messages before the default hook prints
/// them: a handler's panic message may hold one (the worker records the
/// panic, redacted, as a failed attempt, but the hook prints it first).
fn redact_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        match redacted_panic(info.payload(), info.location()) {
            Some(report) => eprintln!("{report}"),
            None => default(info),
        }
    }));
}

/// The report of a panic whose message holds a URL, redacted; `None` for
/// the others (the default hook prints those, backtrace and all).
fn redacted_panic(
    payload: &(dyn std::any::Any + Send),
    location: Option<&std::panic::Location<'_>>,
) -> Option<String> {
    let message = crate::worker::panic_message(payload);
    let redacted = crate::broker::redact_text(&message);
    if redacted == message {
        return None;
    }
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let at = location.map_or_else(String::new, |location| format!(" at {location}"));
    Some(format!("thread '{name}' panicked{at}:\n{redacted}"))
}

/// Sets up the logging of the `worker` command: human-readable lines on
/// stderr, at `info` unless `RUST_LOG` says otherwise. Does nothing when a
/// subscriber is installed already. For programs that run a [`crate::Worker`]
/// themselves and want the same logs.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Ignore the error when the embedding app installed a subscriber already.
    // Colours only on a terminal: a log file or a collector gets plain text
    // (and every job's fields are formatted without escape codes).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(log_fields::BufferedFields::default())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::redacted_panic;

    #[test]
    fn a_panic_holding_a_password_is_reported_redacted_and_others_left_to_the_default_hook() {
        let leaked: Box<dyn std::any::Any + Send> =
            Box::new("no answer from https://bot:t0ken@api.example/hook".to_owned());
        let report = redacted_panic(leaked.as_ref(), None).expect("redacted");
        assert!(
            report.contains("https://bot:***@api.example/hook"),
            "{report}"
        );
        assert!(!report.contains("t0ken"), "{report}");
        let plain: Box<dyn std::any::Any + Send> = Box::new("index out of bounds");
        assert_eq!(redacted_panic(plain.as_ref(), None), None);
    }
}
