//! Declaring queues and exchanges. Each declaration runs on a channel of its own: a
//! PRECONDITION_FAILED closes the channel it happens on, and must not take
//! a publishing or consuming channel down with it.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ErrorKind};

use super::bounded;
use crate::Error;
use crate::dead_letter::queue_name as dead_letter_queue;
use crate::event::ExchangeKind;
use crate::job::Binding;

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
    /// broker's own dead-letter target (at-least-once), so that a message the
    /// broker gives up on (its delivery limit, a length limit set by policy)
    /// lands in `<queue>.dlq` instead of being dropped.
    pub(crate) fn job(queue: &str, queue_type: QueueType) -> Self {
        let spec = QueueSpec::durable(queue);
        match queue_type {
            QueueType::Classic => spec,
            QueueType::Quorum => spec
                .with("x-queue-type", Self::text("quorum"))
                .at_least_once_dead_letters_to(&dead_letter_queue(queue)),
        }
    }

    /// The dead-letter queue of a job queue, of the job queue's type: a
    /// quorum job queue's dead letters must survive the loss of a node as
    /// well as the queue does.
    ///
    /// A quorum queue counts every message handed back (as `worker dlq list`
    /// does) as a delivery, and RabbitMQ 4 drops a message after 20 of them
    /// by default: a quorum DLQ lifts that limit to the largest value, so
    /// that looking at dead letters never wears them out.
    pub(crate) fn dead_letter(queue: &str, queue_type: QueueType) -> Self {
        let spec = QueueSpec::durable(dead_letter_queue(queue));
        match queue_type {
            QueueType::Classic => spec,
            QueueType::Quorum => spec
                .with("x-queue-type", Self::text("quorum"))
                .with("x-delivery-limit", AMQPValue::LongInt(i32::MAX)),
        }
    }

    /// A delay queue of job queue `target`: every message waits `ttl`, then
    /// the broker dead-letters it to `target`.
    ///
    /// A quorum queue with at-least-once dead-lettering: the broker keeps an
    /// expired message until the job queue has confirmed it, so a missing job
    /// queue delays the message instead of dropping it (a classic queue would
    /// drop it), and a broker restart loses nothing.
    pub(crate) fn delay(name: &str, ttl: Duration, target: &str) -> Self {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        QueueSpec::durable(name)
            .with("x-queue-type", Self::text("quorum"))
            .with("x-message-ttl", AMQPValue::LongLongInt(ttl_ms))
            .at_least_once_dead_letters_to(target)
    }

    /// Dead-letters to queue `target` through the default exchange, keeping
    /// each message until `target` has confirmed it (quorum queues only).
    fn at_least_once_dead_letters_to(self, target: &str) -> Self {
        self.with("x-dead-letter-exchange", Self::text(""))
            .with("x-dead-letter-routing-key", Self::text(target))
            .with("x-dead-letter-strategy", Self::text("at-least-once"))
            // Required by at-least-once dead-lettering; no length limit is set.
            .with("x-overflow", Self::text("reject-publish"))
    }
}

/// Opens a channel used for one declaration.
async fn declaring_channel(connection: &Connection, what: &str) -> Result<Channel, Error> {
    bounded(
        || format!("open of a channel to declare {what}"),
        connection.create_channel(),
    )
    .await
}

/// Declares `spec` (durable) on a short-lived channel of its own.
///
/// A queue that exists with other arguments is reported as
/// [`Error::QueueMismatch`], naming the queue and the differing argument.
pub(crate) async fn declare_queue(connection: &Connection, spec: &QueueSpec) -> Result<(), Error> {
    let operation = || format!("declare of queue `{}`", spec.name);
    let channel = declaring_channel(connection, &format!("queue `{}`", spec.name)).await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declared = bounded(
        operation,
        channel.queue_declare(spec.name.as_str().into(), options, spec.arguments.clone()),
    )
    .await;
    match declared {
        Ok(_) => {
            // Best effort: the declaration is done, a failed close only leaks a channel id
            // until the connection closes.
            let _ = bounded(operation, channel.close(200, "declared".into())).await;
            Ok(())
        }
        Err(Error::Broker { source, .. }) if precondition_detail(&source).is_some() => {
            Err(Error::QueueMismatch {
                queue: spec.name.clone(),
                detail: precondition_detail(&source).unwrap_or_default(),
            })
        }
        Err(error) => Err(error),
    }
}

/// Declares exchange `name` (durable) of `kind` on a short-lived channel.
///
/// One that exists as another kind is reported as
/// [`Error::ExchangeKindMismatch`], naming the exchange and both kinds.
pub(crate) async fn declare_exchange(
    connection: &Connection,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), Error> {
    let operation = || format!("declare of exchange `{name}`");
    let channel = declaring_channel(connection, &format!("exchange `{name}`")).await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let declared = bounded(
        operation,
        channel.exchange_declare(name.into(), kind.amqp(), options, FieldTable::default()),
    )
    .await;
    match declared {
        Ok(()) => {
            // Best effort, as for a queue.
            let _ = bounded(operation, channel.close(200, "declared".into())).await;
            Ok(())
        }
        Err(Error::Broker { source, .. }) if precondition_detail(&source).is_some() => {
            let detail = precondition_detail(&source).unwrap_or_default();
            Err(Error::ExchangeKindMismatch {
                exchange: name.to_owned(),
                declared: kind,
                existing: existing_kind(&detail).unwrap_or("another kind").to_owned(),
            })
        }
        Err(error) => Err(error),
    }
}

/// Binds `queue` with `binding`, declaring its exchange first: of its kind
/// when the binding knows it (an event's), else used as it is, or declared
/// a durable topic exchange when it does not exist yet (a raw binding).
pub(crate) async fn bind_queue(
    connection: &Connection,
    queue: &str,
    binding: &Binding,
) -> Result<(), Error> {
    match binding.kind {
        Some(kind) => declare_exchange(connection, binding.exchange, kind).await?,
        None => ensure_exchange(connection, binding.exchange).await?,
    }
    let operation = || format!("bind of queue `{queue}` to `{binding}`");
    let channel = declaring_channel(connection, &format!("a binding of queue `{queue}`")).await?;
    bounded(
        operation,
        channel.queue_bind(
            queue.into(),
            binding.exchange.into(),
            binding.routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = bounded(operation, channel.close(200, "bound".into())).await;
    Ok(())
}

/// The exchange of a raw binding: used as it is when it exists (of any
/// kind), declared a durable topic exchange when it does not.
async fn ensure_exchange(connection: &Connection, name: &str) -> Result<(), Error> {
    let operation = || format!("check of exchange `{name}`");
    let channel = declaring_channel(connection, &format!("exchange `{name}`")).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let checked = bounded(
        operation,
        channel.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    match checked {
        Ok(()) => {
            let _ = bounded(operation, channel.close(200, "checked".into())).await;
            Ok(())
        }
        // The failed check closed its channel.
        Err(Error::Broker { source, .. }) if is_soft(&source, AMQPSoftError::NOTFOUND) => {
            declare_exchange(connection, name, ExchangeKind::Topic).await
        }
        Err(error) => Err(error),
    }
}

/// Whether `error` is the broker's soft error `soft` (which closed a channel).
fn is_soft(error: &lapin::Error, soft: AMQPSoftError) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(soft))
}

/// The kind an exchange has, from the broker's refusal to declare it as
/// another: "inequivalent arg 'type' for exchange 'orders' in vhost '/':
/// received 'fanout' but current is 'topic'".
fn existing_kind(detail: &str) -> Option<&str> {
    let (_, current) = detail.rsplit_once("but current is '")?;
    current.strip_suffix('\'')
}

/// Declares the dead-letter queue of job queue `queue`. One that exists with
/// other arguments (a classic DLQ an older eda-worker declared for a quorum
/// job queue, or one an operator set up) is used as it is, with a warning:
/// dead letters still land there.
pub(crate) async fn declare_dead_letter_queue(
    connection: &Connection,
    queue: &str,
    queue_type: QueueType,
) -> Result<(), Error> {
    match declare_queue(connection, &QueueSpec::dead_letter(queue, queue_type)).await {
        Err(Error::QueueMismatch { queue: dlq, detail }) => {
            tracing::warn!(
                dead_letter_queue = %dlq,
                detail = %detail,
                expected = %queue_type,
                "the dead-letter queue exists with other arguments and is used as it is; to have it declared as eda-worker does (a quorum one survives the loss of a node), move its messages away (worker dlq replay) and delete it"
            );
            Ok(())
        }
        declared => declared,
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
