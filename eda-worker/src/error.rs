//! [`Error`]: what the library returns (a handler returns a
//! [`JobError`](crate::JobError)), and the error text that travels in headers.

use std::borrow::Cow;

/// How many bytes of an error's text travel in a message header.
///
/// Error chains can be arbitrarily long (a remote body, a huge SQL statement);
/// headers live in every copy of the message, so they are capped.
pub const MAX_ERROR_TEXT: usize = 4096;

/// `error: cause: cause`, with the password of any URL in it redacted,
/// capped at [`MAX_ERROR_TEXT`] bytes on a char boundary.
pub fn error_chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors repeat their source in their own message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let text = match crate::broker::redact_text(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(redacted) => redacted,
    };
    cap_text(text, MAX_ERROR_TEXT).into_owned()
}

/// Cuts `text` to at most `max` bytes, on a char boundary, marking the cut.
pub(crate) fn cap_text(text: String, max: usize) -> Cow<'static, str> {
    if text.len() <= max {
        return Cow::Owned(text);
    }
    const MARK: &str = "...";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{MARK}", &text[..end]))
}

/// Errors of the library: connecting, declaring, publishing, configuring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The AMQP URL does not parse.
    #[error("invalid AMQP URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with its password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The broker could not be reached after the configured number of attempts.
    #[error(
        "could not connect to RabbitMQ at {url} after {attempts} attempt(s); check that the broker runs and AMQP_URL is right"
    )]
    Connect {
        /// The URL with its password redacted.
        url: String,
        /// How many attempts were made.
        attempts: usize,
        /// The last attempt's error.
        #[source]
        source: lapin::Error,
    },

    /// The TLS handshake with the broker failed: an untrusted or mismatched
    /// certificate, a plain (non-TLS) port, a refused client certificate.
    #[error(
        "TLS handshake with {host} failed ({url}): {reason}; check the CA (--tls-ca), the host name the certificate is for, and that the port speaks TLS"
    )]
    Tls {
        /// The URL with its password redacted.
        url: String,
        /// The host the certificate was checked against.
        host: String,
        /// What TLS reported.
        reason: String,
    },

    /// A TLS file (CA, client certificate or key) cannot be read or holds no
    /// usable PEM.
    #[error("cannot use the TLS {what} file `{}`: {reason}", path.display())]
    TlsFile {
        /// Which file: `CA`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A queue exists on the broker with other arguments than the ones declared.
    #[error(
        "queue `{queue}` exists with other arguments than this worker declares ({detail}); delete the queue or align the job's queue settings"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The broker's words on the differing argument.
        detail: String,
    },

    /// An event's exchange exists as another kind than the event declares.
    #[error(
        "exchange `{exchange}` exists as a {existing} exchange, but this program declares it {declared}; delete the exchange or change the event's `kind`"
    )]
    ExchangeKindMismatch {
        /// The exchange.
        exchange: String,
        /// The kind this program declares.
        declared: crate::event::ExchangeKind,
        /// The kind it has on the broker.
        existing: String,
    },

    /// A broker operation failed.
    #[error("RabbitMQ {operation} failed")]
    Broker {
        /// What was being done, e.g. `publish to queue \`email\``.
        operation: String,
        /// The broker or connection error.
        #[source]
        source: lapin::Error,
    },

    /// The broker did not answer a call (a declare, qos, consume, close) in time.
    #[error(
        "RabbitMQ did not answer the {operation} within {timeout:?}: it is overloaded, unreachable, or blocking this connection (a memory or disk alarm)"
    )]
    BrokerTimeout {
        /// What was being done.
        operation: String,
        /// The bound.
        timeout: std::time::Duration,
    },

    /// The broker answered a publish with a negative confirm.
    #[error(
        "RabbitMQ refused (nacked) message {message_id} for `{routing_key}`; it was not stored"
    )]
    Nacked {
        /// The message that was refused.
        message_id: String,
        /// Where it was going.
        routing_key: String,
    },

    /// The connection is down and reconnecting failed.
    #[error("not connected to RabbitMQ at {url}: reconnecting failed; try again")]
    NotConnected {
        /// The URL with its password redacted.
        url: String,
        /// Why the reconnect failed, when one was tried.
        #[source]
        source: Option<std::sync::Arc<Error>>,
    },

    /// An enqueue did not finish (reconnect, declare, confirm) within the
    /// client's publish timeout.
    #[error(
        "message {message_id} was not confirmed within {timeout:?}: the broker is away or blocks publishers (a memory or disk alarm); it may still arrive, so retry with the same message id (EnqueueOptions::message_id) and let the inbox drop a copy"
    )]
    PublishTimeout {
        /// The message, which may still reach its queue.
        message_id: String,
        /// The client's publish timeout.
        timeout: std::time::Duration,
    },

    /// The client was closed with [`crate::Client::close`].
    #[error("the client is closed; connect a new one to enqueue")]
    ClientClosed,

    /// A mandatory publish reached no queue.
    #[error(
        "message {message_id} reached no queue: nothing is bound to `{routing_key}` on exchange `{exchange}` (broker said {reply_code} {reply_text})"
    )]
    Unroutable {
        /// The message that was returned.
        message_id: String,
        /// The exchange published to (empty: the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's reply code.
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
    },

    /// Job arguments or an event did not serialize to JSON.
    #[error("could not serialize {payload} to JSON")]
    Serialize {
        /// What was serialized.
        payload: crate::wire::Payload,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A value does not fit in an AMQP short string (255 bytes).
    #[error("{what} is {len} bytes long; AMQP allows at most 255")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length.
        len: usize,
    },

    /// Two `#[job]`s share one wire name.
    #[error(
        "two jobs of queue `{queue}` are registered under the wire name `{name}`: `{first}` and `{second}`; give one of them `#[job(name = \"...\")]`, or another queue"
    )]
    DuplicateJob {
        /// The queue.
        queue: &'static str,
        /// The shared wire name.
        name: &'static str,
        /// One function.
        first: &'static str,
        /// The other function.
        second: &'static str,
    },

    /// A job with raw bindings (`bind`) runs whatever arrives on its
    /// queue, so it cannot share the queue.
    #[error(
        "job `{subscriber}` has raw bindings (`bind`) and takes every message of queue `{queue}`, which job `{other}` uses too; give one of them another queue"
    )]
    RawSubscriberNotAlone {
        /// The queue.
        queue: &'static str,
        /// The job with raw bindings.
        subscriber: &'static str,
        /// The other job.
        other: &'static str,
    },

    /// A job's queue name breaks the rules (see [`crate::Registry::from_definitions`]).
    #[error("job `{job}` cannot use queue `{queue}`: {reason}")]
    InvalidQueueName {
        /// The queue name.
        queue: &'static str,
        /// The job's function.
        job: &'static str,
        /// Which rule it breaks, and what to do.
        reason: String,
    },

    /// Two `#[job]`s on one queue declare different queue types.
    #[error(
        "jobs `{first}` ({first_type}) and `{second}` ({second_type}) share queue `{queue}` but declare different queue types; give them the same `queue_type`"
    )]
    QueueTypeConflict {
        /// The shared queue.
        queue: &'static str,
        /// One function.
        first: &'static str,
        /// Its queue type.
        first_type: crate::QueueType,
        /// The other function.
        second: &'static str,
        /// Its queue type.
        second_type: crate::QueueType,
    },

    /// The worker was asked to consume a queue no job uses.
    #[error("no registered job uses queue `{queue}` (known queues: {known})")]
    UnknownQueue {
        /// The queue asked for.
        queue: String,
        /// The queues the registry knows.
        known: String,
    },

    /// The broker cancelled a consumer: its queue was deleted, or a node failed.
    #[error("the broker cancelled the consumer of queue `{queue}` (was the queue deleted?)")]
    ConsumerCancelled {
        /// The queue.
        queue: String,
    },

    /// A message body is larger than the configured maximum.
    #[error(
        "{payload} would be {size} bytes as JSON, more than the maximum message size of {limit} bytes; pass a reference (an id, a URL) instead of the data, or raise the limit"
    )]
    MessageTooLarge {
        /// What was too large.
        payload: crate::wire::Payload,
        /// The body's size in bytes.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },

    /// A consumer paused while PostgreSQL is away could not hand back all
    /// of its unstarted deliveries; its channel is closed, which does.
    #[error(
        "could not pause the consumer of queue `{queue}` cleanly; its channel is closed so that the broker takes back its unstarted messages"
    )]
    ConsumerPauseFailed {
        /// The queue.
        queue: String,
    },

    /// An ack could not be sent because the channel had closed.
    #[error(
        "could not ack delivery {tag} on queue `{queue}`: the channel is closed; the message will be redelivered"
    )]
    AckFailed {
        /// The queue.
        queue: String,
        /// The delivery tag.
        tag: u64,
    },

    /// A dead-letter queue asked for does not exist.
    #[error(
        "dead-letter queue `{queue}` does not exist; pass the job queue's name, without `.dlq`, and check it (a worker declares its dead-letter queue when it starts)"
    )]
    DeadLetterQueueNotFound {
        /// The dead-letter queue, `<queue>.dlq`.
        queue: String,
    },

    /// No dead letter has the message id a replay asked for.
    #[error(
        "no dead letter with message id `{message_id}` in `{queue}`; `worker dlq list` shows the ids"
    )]
    DeadLetterNotFound {
        /// The dead-letter queue, `<queue>.dlq`.
        queue: String,
        /// The message id asked for.
        message_id: String,
    },

    /// A dead letter was replayed, but removing it from the dead-letter queue failed.
    #[error(
        "message {message_id} was replayed to `{queue}`, but could not be removed from `{queue}.dlq`, where it stays; do not replay it again (the job would run twice), purge or inspect it instead"
    )]
    ReplayNotAcked {
        /// The job queue it was replayed to.
        queue: String,
        /// The replayed message.
        message_id: String,
        /// Why the ack failed (boxed: the other variants stay small).
        #[source]
        source: Box<lapin::Error>,
    },

    /// `ctx.tx()` was called where there is no transaction.
    #[error("job `{job}` has no database transaction: {reason}")]
    NoTransaction {
        /// The job.
        job: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// The database could not be reached.
    #[error(
        "could not connect to PostgreSQL at {url}; check that it runs and DATABASE_URL is right"
    )]
    DatabaseConnect {
        /// The URL with its password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A database operation failed.
    #[error("PostgreSQL {operation} failed")]
    Database {
        /// What was being done.
        operation: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// Applying the migrations failed.
    #[error("migrating eda-worker's tables in schema `{schema}` failed")]
    Migrate {
        /// The schema.
        schema: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// The database was migrated by a newer eda-worker.
    #[error(
        "schema `{schema}` has migration {version} applied, which this binary does not know: a newer eda-worker migrated this database (this one knows up to {known}); run the newer version, or this one against another schema"
    )]
    DatabaseNewer {
        /// The schema.
        schema: String,
        /// The unknown migration applied.
        version: i64,
        /// The newest migration this binary knows.
        known: i64,
    },

    /// eda-worker's tables are missing or older than this binary needs.
    #[error(
        "eda-worker's tables in schema `{schema}` are not migrated ({}; this binary needs up to {needed}): run `worker migrate`, or start the worker with --migrate",
        applied.map_or_else(|| "no migration applied".to_owned(), |version| format!("applied up to {version}"))
    )]
    NotMigrated {
        /// The schema.
        schema: String,
        /// The newest migration applied, if any.
        applied: Option<i64>,
        /// The newest migration this binary knows.
        needed: i64,
    },

    /// An applied migration differs from this binary's.
    #[error(
        "migration {version} in schema `{schema}` differs from this binary's: migrations must not be edited once applied"
    )]
    MigrationChanged {
        /// The schema.
        schema: String,
        /// The migration.
        version: i64,
    },

    /// The worker was configured with nothing to do or impossible settings.
    #[error("invalid configuration: {0}")]
    Config(String),
}
