//! Declaring queues. Each declaration runs on a channel of its own: a
//! PRECONDITION_FAILED closes the channel it happens on, and must not take
//! a publishing or consuming channel down with it.

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Connection, ErrorKind};

use crate::Error;

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
    let channel = connection.create_channel().await.map_err(broker_error)?;
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
