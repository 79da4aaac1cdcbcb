//! [`ClientOptions`] (how a client connects and publishes) and
//! [`EnqueueOptions`] (correlation id, message id and due time of one enqueue).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::DEFAULT_MAX_MESSAGE_SIZE;
use crate::wire::{MessageId, now_millis};
use crate::{DelayQueues, Tls};

/// How long one enqueue may take when not configured.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Client`](crate::Client) connects and publishes.
///
/// ```
/// use eda_worker::ClientOptions;
///
/// let options = ClientOptions::default()
///     .connection_name("checkout-web")
///     .max_message_size(512 * 1024);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// TLS files for an `amqps://` URL.
    pub tls: Tls,
    /// The connection's name, as RabbitMQ's management tools show it.
    pub connection_name: String,
    /// The delay queues scheduled jobs go through (the workers' set).
    pub delay_queues: DelayQueues,
    /// Larger arguments are refused with [`Error::MessageTooLarge`](crate::Error::MessageTooLarge).
    pub max_message_size: usize,
    /// How long one enqueue may take, reconnect and confirm included; past
    /// it the enqueue fails with
    /// [`Error::PublishTimeout`](crate::Error::PublishTimeout).
    pub publish_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: Tls::default(),
            connection_name: "eda-worker client".to_owned(),
            delay_queues: DelayQueues::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        }
    }
}

impl ClientOptions {
    setters! {
        /// TLS files for an `amqps://` URL (a CA, a client certificate).
        tls(Tls) => tls;
        /// Names the connection (e.g. after the app: `"checkout-web"`).
        connection_name(impl Into<String>) => connection_name;
        /// The delay queues scheduled jobs go through.
        delay_queues(DelayQueues) => delay_queues;
        /// The largest arguments (as JSON bytes) this client enqueues.
        max_message_size(usize) => max_message_size;
        /// How long one enqueue may take, reconnect and confirm included
        /// (30 s by default): a web request does not wait on a broker that
        /// is away or blocks publishers.
        publish_timeout(Duration) => publish_timeout;
    }
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// The correlation id to carry (e.g. the web request's id); when `None`,
    /// the message id (which the message does not repeat on the wire).
    pub correlation_id: Option<String>,
    /// The message id to use instead of a fresh one (e.g. for idempotent producers).
    pub message_id: Option<MessageId>,
    /// When the job is due; `None` (or a time past) runs it as soon as a worker can.
    pub(super) due: Option<Due>,
}

/// When a scheduled job is due.
#[derive(Debug, Clone, Copy)]
pub(super) enum Due {
    In(Duration),
    At(SystemTime),
}

impl Due {
    /// Milliseconds since the epoch, saturating (a delay of centuries is
    /// still a due time, not a panic).
    pub(super) fn eta_millis(self) -> u64 {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        match self {
            Due::In(delay) => now_millis().saturating_add(millis(delay)),
            Due::At(time) => time.duration_since(UNIX_EPOCH).map_or(0, millis),
        }
    }
}

impl EnqueueOptions {
    /// Carries `correlation_id` into the job and every job it causes.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Uses `message_id` (a [`MessageId`] or a `Uuid`) instead of a fresh
    /// id; on the wire it is written in the compact form.
    pub fn message_id(mut self, message_id: impl Into<MessageId>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    /// Runs the job no earlier than `delay` after it is enqueued.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.due = Some(Due::In(delay));
        self
    }

    /// Runs the job no earlier than `time`.
    pub fn at(mut self, time: SystemTime) -> Self {
        self.due = Some(Due::At(time));
        self
    }
}

/// Options of one event publish.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// The correlation id to carry (e.g. the web request's id); when `None`,
    /// the message id (which the message does not repeat on the wire).
    pub correlation_id: Option<String>,
    /// The message id to use instead of a fresh one.
    pub message_id: Option<MessageId>,
}

impl PublishOptions {
    /// Carries `correlation_id` into the event and the jobs it causes.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Uses `message_id` (a [`MessageId`] or a `Uuid`) instead of a fresh id.
    pub fn message_id(mut self, message_id: impl Into<MessageId>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }
}
