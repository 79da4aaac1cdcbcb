//! Settings: where the broker is and how the worker consumes.

use std::time::Duration;

use crate::postgres::Database;
use crate::{DelayQueues, Tls};

/// The broker URL used when `AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Handlers in flight per queue when not configured.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How long a stopping worker waits for running jobs when not configured.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection attempts before giving up when not configured.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 5;

/// The largest message body a worker handles and a client enqueues when not
/// configured: 4 MiB. Bigger messages slow the broker for every queue; pass a
/// reference (an id, a URL) instead of the data.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// RabbitMQ's default `consumer_timeout`: a delivery unacked for this long
/// makes the broker close the consumer's channel.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often a redelivered message may have started without finishing
/// before it is dead-lettered, when not configured.
pub const DEFAULT_MAX_STARTS: u32 = 5;

/// How far ahead a message may be due when not configured: a year, of 366
/// days so that a date a calendar year ahead is fine in a leap year too.
pub const DEFAULT_ETA_HORIZON: Duration = Duration::from_secs(366 * 24 * 3600);

/// `AMQP_URL`, or [`DEFAULT_AMQP_URL`].
pub fn amqp_url_from_env() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned())
}

/// How a worker runs. Build it with [`WorkerConfig::new`] and the setters.
///
/// ```
/// use std::time::Duration;
/// use eda_worker::WorkerConfig;
///
/// let config = WorkerConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .queues(["email"])
///     .concurrency(8)
///     .prefetch(32)
///     .shutdown_timeout(Duration::from_secs(10));
/// assert_eq!(config.effective_prefetch(), 32);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The broker URL.
    pub amqp_url: String,
    /// TLS files for an `amqps://` URL.
    pub tls: Tls,
    /// The queues to consume; empty means every queue a registered job uses.
    pub queues: Vec<String>,
    /// Handlers in flight per queue.
    pub concurrency: usize,
    /// Unacked messages the broker may push per queue; `None`: 4 × concurrency.
    pub prefetch: Option<u16>,
    /// How long a stopping worker lets running jobs finish.
    pub shutdown_timeout: Duration,
    /// Connection attempts before the worker gives up.
    pub connect_attempts: usize,
    /// The connection's name, as RabbitMQ's management tools show it.
    pub connection_name: String,
    /// The delay queues for retries and not-yet-due messages.
    pub delay_queues: DelayQueues,
    /// Larger messages are dead-lettered unrun.
    pub max_message_size: usize,
    /// The broker's `consumer_timeout`, to warn about jobs that may outlive it.
    pub consumer_timeout: Duration,
    /// How far ahead a message may be due (`x-eda-eta`); a message due
    /// further ahead is dead-lettered, taken for a mistake.
    pub eta_horizon: Duration,
    /// PostgreSQL for handlers' transactions and the inbox; `None`: jobs run
    /// without dedup and `ctx.tx()` is an error.
    pub database: Option<Database>,
    /// Apply eda-worker's migrations when the worker starts.
    pub migrate: bool,
    /// Run the outbox relay inside the worker (when a database is configured).
    pub relay: bool,
    /// How long processed message ids stay in the inbox.
    pub inbox_retention: Duration,
    /// How often a redelivered message may have started without finishing
    /// (each time, the worker died under it) before it is dead-lettered
    /// instead of run; counted in the database, so only with one. 0: no limit.
    pub max_starts: u32,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand, so that the password in the URL never reaches a log line.
        f.debug_struct("WorkerConfig")
            .field("amqp_url", &crate::redact_url(&self.amqp_url))
            .field("tls", &self.tls)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("connect_attempts", &self.connect_attempts)
            .field("connection_name", &self.connection_name)
            .field("delay_queues", &self.delay_queues)
            .field("max_message_size", &self.max_message_size)
            .field("consumer_timeout", &self.consumer_timeout)
            .field("eta_horizon", &self.eta_horizon)
            .field("database", &self.database)
            .field("migrate", &self.migrate)
            .field("relay", &self.relay)
            .field("inbox_retention", &self.inbox_retention)
            .field("max_starts", &self.max_starts)
            .finish()
    }
}

impl WorkerConfig {
    /// Defaults, with the broker at `amqp_url`.
    pub fn new(amqp_url: impl Into<String>) -> Self {
        WorkerConfig {
            amqp_url: amqp_url.into(),
            tls: Tls::default(),
            queues: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
            connection_name: "eda-worker".to_owned(),
            delay_queues: DelayQueues::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            consumer_timeout: DEFAULT_CONSUMER_TIMEOUT,
            eta_horizon: DEFAULT_ETA_HORIZON,
            max_starts: DEFAULT_MAX_STARTS,
            database: None,
            migrate: false,
            relay: true,
            inbox_retention: crate::postgres::DEFAULT_INBOX_RETENTION,
        }
    }

    /// Defaults, with the broker at `AMQP_URL` and TLS files from
    /// `AMQP_TLS_CA`, `AMQP_TLS_CERT` and `AMQP_TLS_KEY`.
    pub fn from_env() -> Self {
        Self::new(amqp_url_from_env()).tls(Tls::from_env())
    }

    /// Consume only these queues.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    setters! {
        /// TLS files for an `amqps://` URL (a CA, a client certificate).
        tls(Tls) => tls;
        /// Handlers in flight per queue.
        concurrency(usize) => concurrency;
        /// Unacked messages per queue.
        prefetch(u16) => prefetch;
        /// How long a stopping worker lets running jobs finish.
        shutdown_timeout(Duration) => shutdown_timeout;
        /// Connection attempts before giving up.
        connect_attempts(usize) => connect_attempts;
        /// Names the worker's connection (shown by `rabbitmqctl list_connections`).
        connection_name(impl Into<String>) => connection_name;
        /// The TTLs of each job queue's delay queues, for retries.
        delay_queues(DelayQueues) => delay_queues;
        /// The largest message body handled; larger ones are dead-lettered unrun.
        max_message_size(usize) => max_message_size;
        /// The broker's `consumer_timeout` (as set in rabbitmq.conf), so that the
        /// worker warns at start about jobs whose timeout exceeds it.
        consumer_timeout(Duration) => consumer_timeout;
        /// How far ahead a message may be due; one due further ahead is
        /// dead-lettered (a year by default).
        eta_horizon(Duration) => eta_horizon;
        /// PostgreSQL for handlers' transactions and the inbox (dedup).
        database(Database) => database;
        /// Apply eda-worker's migrations when the worker starts.
        migrate_on_start(bool) => migrate;
        /// Run the outbox relay inside the worker (on by default when a database
        /// is configured; turn it off to run `worker relay` apart).
        relay(bool) => relay;
        /// How long processed message ids stay in the inbox (7 days by default).
        inbox_retention(Duration) => inbox_retention;
        /// How often a redelivered message may have started without
        /// finishing before it is dead-lettered (5 by default; 0: no limit).
        max_starts(u32) => max_starts;
    }

    /// The prefetch in force: the configured one, or 4 × concurrency (at most 65535).
    pub fn effective_prefetch(&self) -> u16 {
        self.prefetch.unwrap_or_else(|| {
            u16::try_from(self.concurrency.saturating_mul(4)).unwrap_or(u16::MAX)
        })
    }

    /// Acks coalesced into one frame at most: a quarter of the prefetch window,
    /// so the broker always has room to push more while acks are pending.
    pub(crate) fn ack_batch(&self) -> usize {
        (usize::from(self.effective_prefetch()) / 4).clamp(1, 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", WorkerConfig::new("amqp://app:s3cret@rabbit/%2f"));
        assert!(shown.contains("amqp://app:***@rabbit/%2f"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn prefetch_defaults_to_four_times_concurrency() {
        assert_eq!(
            WorkerConfig::new("amqp://x")
                .concurrency(10)
                .effective_prefetch(),
            40
        );
        assert_eq!(
            WorkerConfig::new("amqp://x")
                .concurrency(100_000)
                .effective_prefetch(),
            u16::MAX
        );
    }

    #[test]
    fn ack_batch_leaves_room_in_the_prefetch_window() {
        assert_eq!(WorkerConfig::new("amqp://x").prefetch(1).ack_batch(), 1);
        assert_eq!(WorkerConfig::new("amqp://x").prefetch(40).ack_batch(), 10);
        assert_eq!(WorkerConfig::new("amqp://x").prefetch(1000).ack_batch(), 64);
    }
}
