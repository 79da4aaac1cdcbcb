//! Replies to requests. A message with `reply_to` gets one reply, on its
//! final outcome: the handler's output on success, its error when it is
//! dead-lettered, or a `duplicate` when the inbox had processed it already.
//! A retry sends none: the caller waits across retries, up to its deadline.
//!
//! The reply goes through the default exchange to `reply_to` (a queue, or
//! RabbitMQ's direct reply-to pseudo-queue), not persistent, with the
//! request's correlation id. A caller that is gone is not the job's
//! failure: a reply no queue takes is dropped, and logged.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::dispatch::{Dispatch, Received};
use crate::Error;
use crate::error::error_chain_text;
use crate::wire::{Envelope, HEADER_ERROR, HEADER_ERROR_KIND, HEADER_REQUEST_ID, MessageId};

/// How a request ended, as its reply says it.
pub(super) enum Answer<'a> {
    /// The handler's output, as JSON.
    Output(Vec<u8>),
    /// The request failed for good: its error (capped, as on a dead
    /// letter), and `permanent` or `retryable`.
    Failed { kind: &'static str, error: &'a str },
    /// The inbox had processed the request already; it was not run again.
    Duplicate,
}

/// Whether `delivery` is a request: it names where its reply goes.
pub(super) fn is_request(delivery: &Received) -> bool {
    reply_to(delivery).is_some()
}

/// Where the reply to `delivery` goes, if it is a request.
fn reply_to(delivery: &Received) -> Option<&str> {
    delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|reply_to| reply_to.as_str())
        .filter(|reply_to| !reply_to.is_empty())
}

/// Sends `answer` to the caller of `delivery`, if it is a request.
pub(super) async fn reply(
    delivery: &Received,
    envelope: &Envelope,
    dispatch: &Dispatch,
    answer: Answer<'_>,
) {
    let Some(reply_to) = reply_to(delivery) else {
        return;
    };
    let mut headers = FieldTable::default();
    if !envelope.message_id.is_empty() {
        headers.insert(
            HEADER_REQUEST_ID.into(),
            AMQPValue::LongString(envelope.message_id.as_str().into()),
        );
    }
    let body = match answer {
        Answer::Output(body) => body,
        Answer::Failed { kind, error } => {
            headers.insert(HEADER_ERROR.into(), AMQPValue::LongString(error.into()));
            headers.insert(HEADER_ERROR_KIND.into(), AMQPValue::LongString(kind.into()));
            b"null".to_vec()
        }
        Answer::Duplicate => {
            headers.insert(
                HEADER_ERROR.into(),
                AMQPValue::LongString(
                    "this request was processed before (its inbox row exists); it was not run again"
                        .into(),
                ),
            );
            headers.insert(
                HEADER_ERROR_KIND.into(),
                AMQPValue::LongString("duplicate".into()),
            );
            b"null".to_vec()
        }
    };
    let id = MessageId::new().to_string();
    let mut properties = BasicProperties::default()
        .with_message_id(id.as_str().into())
        .with_headers(headers);
    if let Some(correlation_id) = envelope.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.into());
    }
    let sent = dispatch
        .publisher
        .publish("", reply_to, &id, &body, properties)
        .await;
    match sent {
        Ok(()) => tracing::debug!(reply_to = %reply_to, "reply sent"),
        Err(Error::Unroutable { .. }) => {
            tracing::info!(reply_to = %reply_to, "the caller is gone: its reply was dropped");
        }
        Err(error) => tracing::warn!(
            reply_to = %reply_to,
            error = %error_chain_text(&error),
            "could not send the reply; the caller will time out"
        ),
    }
}
