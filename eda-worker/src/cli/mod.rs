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
//! (the library side is [`crate::dlq`]).
//!
//! The CLI owns the signals: the first SIGTERM or SIGINT starts a graceful
//! stop, a second one exits at once with status 130.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{
    DEFAULT_AMQP_URL, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_ATTEMPTS, DEFAULT_MAX_MESSAGE_SIZE,
};
use crate::retry::DEFAULT_DELAY_BUCKETS;
use crate::{DelayQueues, Registry, Worker, WorkerConfig};

mod dead_letter;

/// Exit status when a second signal cuts the graceful stop short.
const EXIT_INTERRUPTED: u8 = 130;

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
    Run(RunArgs),
    /// List the registered jobs.
    Jobs,
    /// List, replay or purge the dead letters of a job queue (QUEUE.dlq).
    #[command(subcommand)]
    Dlq(dead_letter::DlqCommand),
    /// Create or update eda-worker's tables in PostgreSQL.
    Migrate(DatabaseArgs),
    /// Publish the outbox to RabbitMQ until SIGTERM or SIGINT (without consuming jobs).
    Relay(RelayArgs),
    /// The transactional outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Debug, Args)]
struct RelayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// TTLs of the delay queues scheduled rows go through; the same as the
    /// workers' (default: 100ms,250ms,500ms,1s,2s,5s,10s,30s,1m,5m,15m,1h).
    #[arg(long, env = "EDA_DELAY_BUCKETS", value_delimiter = ',', value_parser = humantime::parse_duration)]
    delay_buckets: Vec<Duration>,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Pending rows, the oldest row's age, and the rows that keep failing.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Where eda-worker's tables are.
#[derive(Debug, Args)]
struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema of eda-worker's tables (kept apart from the app's).
    #[arg(long, env = "EDA_DB_SCHEMA", default_value = crate::postgres::DEFAULT_SCHEMA)]
    db_schema: String,
}

impl DatabaseArgs {
    /// Connects, when a URL is configured.
    async fn connect(self) -> Result<Option<crate::postgres::Database>, crate::Error> {
        self.connect_with_pool_size(crate::postgres::DEFAULT_POOL_SIZE)
            .await
    }

    /// Connects with a pool of up to `max_connections`, when a URL is configured.
    async fn connect_with_pool_size(
        self,
        max_connections: u32,
    ) -> Result<Option<crate::postgres::Database>, crate::Error> {
        let schema = crate::postgres::Schema::new(self.db_schema)?;
        match self.database_url {
            Some(url) => Ok(Some(
                crate::postgres::Database::connect_with_pool_size(&url, schema, max_connections)
                    .await?,
            )),
            None => Ok(None),
        }
    }
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

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Apply eda-worker's migrations at start (needs a database).
    #[arg(long, env = "EDA_MIGRATE")]
    migrate: bool,
    /// Do not run the outbox relay inside the worker (run `worker relay` instead).
    #[arg(long, env = "EDA_NO_RELAY")]
    no_relay: bool,
    /// How long processed message ids stay in the inbox, e.g. 7d.
    #[arg(long, env = "EDA_INBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    inbox_retention: Duration,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    amqp_url: String,
    /// Queues to consume, comma-separated (default: every queue a job uses).
    #[arg(long, env = "EDA_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Handlers in flight per queue.
    #[arg(long, env = "EDA_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Unacked messages per queue (default: 4 x concurrency).
    #[arg(long, env = "EDA_PREFETCH")]
    prefetch: Option<u16>,
    /// How long running jobs may finish after a stop signal, e.g. 30s, 2m.
    #[arg(long, env = "EDA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Connection attempts before giving up.
    #[arg(long, env = "EDA_CONNECT_ATTEMPTS", default_value_t = DEFAULT_CONNECT_ATTEMPTS)]
    connect_attempts: usize,
    /// Larger messages (in bytes) are dead-lettered without running.
    #[arg(long, env = "EDA_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// The broker's consumer_timeout (rabbitmq.conf), to warn about longer jobs.
    #[arg(long, env = "EDA_CONSUMER_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    consumer_timeout: Duration,
    /// TTLs of each job queue's delay queues, comma-separated (default: 100ms,250ms,500ms,1s,2s,5s,10s,30s,1m,5m,15m,1h).
    #[arg(long, env = "EDA_DELAY_BUCKETS", value_delimiter = ',', value_parser = humantime::parse_duration)]
    delay_buckets: Vec<Duration>,
}

impl RunArgs {
    /// The worker's settings, and where its database is (connected by the caller).
    fn into_config(self) -> Result<(WorkerConfig, DatabaseArgs), crate::Error> {
        let delays = delay_queues(self.delay_buckets)?;
        let mut config = WorkerConfig::new(self.amqp_url)
            .queues(
                self.queues
                    .into_iter()
                    .filter(|queue| !queue.trim().is_empty()),
            )
            .concurrency(self.concurrency)
            .shutdown_timeout(self.shutdown_timeout)
            .connect_attempts(self.connect_attempts)
            .max_message_size(self.max_message_size)
            .consumer_timeout(self.consumer_timeout)
            .delay_queues(delays)
            .inbox_retention(self.inbox_retention);
        config.prefetch = self.prefetch;
        Ok((config, self.database))
    }
}

/// Parses the command line and runs the `worker` command.
pub async fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => run(args).await.map_err(CommandError::from),
        Command::Jobs => list_jobs().map_err(CommandError::from),
        Command::Dlq(command) => dead_letter::run(command).await,
        Command::Migrate(args) => migrate(args).await.map_err(CommandError::from),
        Command::Relay(args) => relay(args).await.map_err(CommandError::from),
        Command::Outbox(OutboxCommand::Status { database, json }) => {
            outbox_status(database, json).await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", crate::error::error_chain_text(&error));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Ignore the error when the embedding app installed a subscriber already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(args: RunArgs) -> Result<(), crate::Error> {
    let (migrate, relay) = (args.migrate, !args.no_relay);
    let (mut config, database) = args.into_config()?;
    config = config.relay(relay);
    let queues = if config.queues.is_empty() {
        Registry::from_linked_jobs()?.queues().len()
    } else {
        config.queues.len()
    };
    let pool_size = crate::postgres::pool_size(config.concurrency, queues, relay);
    match database.connect_with_pool_size(pool_size).await? {
        Some(database) => config = config.database(database).migrate_on_start(migrate),
        None if migrate => {
            return Err(crate::Error::Config(
                "--migrate needs a database: set DATABASE_URL or pass --database-url".into(),
            ));
        }
        None => tracing::info!("no DATABASE_URL: jobs run without dedup, and ctx.tx() is an error"),
    }
    let worker = Worker::new(config)?;
    let token = CancellationToken::new();
    // Installed before anything else runs, so that an early SIGTERM is a graceful
    // stop and not the default action.
    let signals = match StopSignals::install() {
        Ok(signals) => Some(tokio::spawn(stop_on_signals(signals, token.clone()))),
        Err(error) => {
            tracing::error!(error = %error, "cannot listen for stop signals; stop the worker with SIGKILL");
            None
        }
    };
    tracing::info!(queues = ?worker.queues(), "worker starting");
    let result = worker.run(token).await;
    if let Some(signals) = signals {
        signals.abort();
    }
    if result.is_ok() {
        tracing::info!("worker stopped");
    }
    result
}

/// First signal: cancel the token (graceful stop). Second: exit at once.
async fn stop_on_signals(mut signals: StopSignals, token: CancellationToken) {
    signals.next().await;
    tracing::info!("stop signal received; finishing running jobs (send another to exit at once)");
    token.cancel();
    signals.next().await;
    tracing::warn!("second stop signal; exiting without waiting for running jobs");
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}

/// SIGTERM and SIGINT, listened to from installation on: a signal that comes
/// while the first one is being handled is not lost.
#[cfg(unix)]
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals)
    }

    async fn next(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The delay queues of `--delay-buckets` (the defaults when none are given).
fn delay_queues(buckets: Vec<Duration>) -> Result<DelayQueues, crate::Error> {
    if buckets.is_empty() {
        DelayQueues::new(DEFAULT_DELAY_BUCKETS.to_vec())
    } else {
        DelayQueues::new(buckets)
    }
}

async fn relay(args: RelayArgs) -> Result<(), crate::Error> {
    let delays = delay_queues(args.delay_buckets)?;
    let Some(database) = args.database.connect().await? else {
        return Err(crate::Error::Config(
            "worker relay needs a database: set DATABASE_URL or pass --database-url".into(),
        ));
    };
    let token = CancellationToken::new();
    let signals = match StopSignals::install() {
        Ok(signals) => Some(tokio::spawn(stop_on_signals(signals, token.clone()))),
        Err(error) => {
            tracing::error!(error = %error, "cannot listen for stop signals; stop the relay with SIGKILL");
            None
        }
    };
    let result = crate::outbox::Relay::new(database, args.amqp_url)
        .delay_queues(delays)
        .run(token)
        .await;
    if let Some(signals) = signals {
        signals.abort();
    }
    result
}

async fn outbox_status(args: DatabaseArgs, json: bool) -> Result<(), CommandError> {
    let Some(database) = args.connect().await? else {
        return Err(crate::Error::Config(
            "worker outbox status needs a database: set DATABASE_URL or pass --database-url".into(),
        )
        .into());
    };
    let status = crate::outbox::status(&database).await;
    database.close().await;
    let status = status?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(CommandError::Json)?
        );
        return Ok(());
    }
    let age = status
        .oldest_age_secs
        .map_or_else(|| "-".to_owned(), |secs| format!("{secs:.1}s"));
    println!("pending rows: {}", status.pending);
    println!("oldest row:   {age}");
    if status.failing.is_empty() {
        println!("failing rows: none");
    } else {
        let rows: Vec<[String; 5]> = status
            .failing
            .iter()
            .map(|row| {
                [
                    row.id.to_string(),
                    row.message_id.clone(),
                    row.routing_key.clone(),
                    row.attempts.to_string(),
                    row.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            render_table(
                ["ROW", "MESSAGE ID", "QUEUE", "ATTEMPTS", "LAST ERROR"],
                &rows
            )
        );
    }
    Ok(())
}

async fn migrate(args: DatabaseArgs) -> Result<(), crate::Error> {
    let Some(database) = args.connect().await? else {
        return Err(crate::Error::Config(
            "worker migrate needs a database: set DATABASE_URL or pass --database-url".into(),
        ));
    };
    let migrated = database.migrate().await;
    database.close().await;
    migrated?;
    println!(
        "schema `{}` is at migration {}",
        database.schema(),
        crate::postgres::latest_version()
    );
    Ok(())
}

fn list_jobs() -> Result<(), crate::Error> {
    let registry = Registry::from_linked_jobs()?;
    print!("{}", jobs_table(&registry));
    Ok(())
}

fn jobs_table(registry: &Registry) -> String {
    let rows: Vec<[String; 7]> = registry
        .jobs()
        .map(|job| {
            [
                job.name.to_owned(),
                job.queue.to_owned(),
                job.queue_type.to_string(),
                job.retries.to_string(),
                format!(
                    "{}..{}",
                    humantime::format_duration(job.backoff.min),
                    humantime::format_duration(job.backoff.max)
                ),
                humantime::format_duration(job.timeout).to_string(),
                job.function_path.to_owned(),
            ]
        })
        .collect();
    let mut table = render_table(
        [
            "JOB", "QUEUE", "TYPE", "RETRIES", "BACKOFF", "TIMEOUT", "FUNCTION",
        ],
        &rows,
    );
    if rows.is_empty() {
        table.push_str("(no jobs registered: is the crate with your #[job] functions linked into this binary?)\n");
    }
    table
}

/// Left-aligned columns two spaces apart, a header line first.
fn render_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}
