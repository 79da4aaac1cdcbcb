//! Declaring queues. Each declaration runs on a channel of its own: a
//! PRECONDITION_FAILED closes the channel it happens on, and must not take
//! a publishing or consuming channel down with it.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use crate::Error;
use crate::wire::dead_letter_queue;

/// The RabbitMQ queue type of a job queue (`#[job(queue_type = "quorum")]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A classic queue: one node, the default.
    #[default]
    Classic,
    /// A quorum queue: replicated with Raft, for clusters.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A queue as eda-worker declares it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) arguments: FieldTable,
}

impl QueueSpec {
    /// A durable queue with no special arguments.
    pub(crate) fn durable(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            arguments: FieldTable::default(),
        }
    }

    fn with(mut self, argument: &str, value: AMQPValue) -> Self {
        self.arguments.insert(argument.into(), value);
        self
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    /// A job queue. A quorum one also names its dead-letter queue as the
    /// broker's own dead-letter target, so that a message the broker gives up
    /// on (its delivery limit, a length limit set by policy) lands in
    /// `<queue>.dlq` instead of being dropped.
    pub(crate) fn job(queue: &str, queue_type: QueueType) -> Self {
        let spec = QueueSpec::durable(queue);
        match queue_type {
            QueueType::Classic => spec,
            QueueType::Quorum => spec
                .with("x-queue-type", Self::text("quorum"))
                .with("x-dead-letter-exchange", Self::text(""))
                .with(
                    "x-dead-letter-routing-key",
                    Self::text(&dead_letter_queue(queue)),
                ),
        }
    }

    /// The dead-letter queue of a job queue: the same type as the job queue.
    pub(crate) fn dead_letter(queue: &str, queue_type: QueueType) -> Self {
        let spec = QueueSpec::durable(dead_letter_queue(queue));
        match queue_type {
            QueueType::Classic => spec,
            QueueType::Quorum => spec.with("x-queue-type", Self::text("quorum")),
        }
    }

    /// A delay queue: every message waits `ttl`, then the broker dead-letters
    /// it through the default exchange under its own routing key, i.e. back to
    /// the job queue it was published for.
    ///
    /// A quorum queue with at-least-once dead-lettering: the broker keeps an
    /// expired message until the job queue has confirmed it, so a missing job
    /// queue delays the message instead of dropping it (a classic queue would
    /// drop it), and a broker restart loses nothing.
    pub(crate) fn delay(name: &str, ttl: Duration) -> Self {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        QueueSpec::durable(name)
            .with("x-queue-type", Self::text("quorum"))
            .with("x-message-ttl", AMQPValue::LongLongInt(ttl_ms))
            .with("x-dead-letter-exchange", Self::text(""))
            .with("x-dead-letter-strategy", Self::text("at-least-once"))
            // Required by at-least-once dead-lettering; no length limit is set.
            .with("x-overflow", Self::text("reject-publish"))
    }
}

/// Opens a channel used for one declaration.
async fn declaring_channel(connection: &Connection, what: &str) -> Result<Channel, Error> {
    connection
        .create_channel()
        .await
        .map_err(|source| Error::Broker {
            operation: format!("open a channel to declare {what}"),
            source,
        })
}

/// Declares a durable exchange of `kind` on a channel of its own, and binds
/// `queue` to it with `routing_key` when given.
pub(crate) async fn declare_exchange(
    connection: &Connection,
    exchange: &str,
    kind: ExchangeKind,
    bind: Option<(&str, &str)>,
) -> Result<(), Error> {
    let what = format!("exchange `{exchange}`");
    let channel = declaring_channel(connection, &what).await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    if let Err(source) = channel
        .exchange_declare(exchange.into(), kind, options, FieldTable::default())
        .await
    {
        return Err(match precondition_detail(&source) {
            Some(detail) => Error::ExchangeMismatch {
                exchange: exchange.to_owned(),
                detail,
            },
            None => Error::Broker {
                operation: format!("declare of {what}"),
                source,
            },
        });
    }
    if let Some((queue, routing_key)) = bind {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| Error::Broker {
                operation: format!("bind of queue `{queue}` to {what}"),
                source,
            })?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Declares `spec` (durable) on a short-lived channel of its own.
///
/// A queue that exists with other arguments is reported as
/// [`Error::QueueMismatch`], naming the queue and the differing argument.
pub(crate) async fn declare_queue(connection: &Connection, spec: &QueueSpec) -> Result<(), Error> {
    let broker_error = |source| Error::Broker {
        operation: format!("declare of queue `{}`", spec.name),
        source,
    };
    let channel = declaring_channel(connection, &format!("queue `{}`", spec.name)).await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(spec.name.as_str().into(), options, spec.arguments.clone())
        .await;
    match declared {
        Ok(_) => {
            // Best effort: the declaration is done, a failed close only leaks a channel id
            // until the connection closes.
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        Err(source) => Err(match precondition_detail(&source) {
            Some(detail) => Error::QueueMismatch {
                queue: spec.name.clone(),
                detail,
            },
            None => broker_error(source),
        }),
    }
}

/// The broker's explanation when a declaration failed on differing arguments.
fn precondition_detail(error: &lapin::Error) -> Option<String> {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    if !matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    ) {
        return None;
    }
    let text = amqp.get_message().as_str();
    Some(
        text.strip_prefix("PRECONDITION_FAILED - ")
            .unwrap_or(text)
            .to_owned(),
    )
}
