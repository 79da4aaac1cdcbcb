//! `Client::call`: request-reply over RabbitMQ's direct reply-to.
//!
//! Each client session has one call channel, opened on the first call: it
//! consumes `amq.rabbitmq.reply-to` (no acks) and publishes every request,
//! as direct reply-to requires, in confirm mode. Concurrent calls share it;
//! a reply finds its call by `x-eda-request-id`, the request's message id.
//! A reply for no pending call (late, or unknown) is dropped and logged.
//! When the channel or the connection goes, every pending call hears so at
//! once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::oneshot;

use crate::Error;
use crate::broker::bounded;
use crate::wire::{
    HEADER_DEADLINE, HEADER_ERROR, HEADER_ERROR_KIND, HEADER_REQUEST_ID, header_text,
};

/// The pseudo-queue of direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why a call got no value back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The job failed: with a permanent error, or its retries spent.
    #[error("job `{job}` failed ({}): {error}", if *permanent { "permanent error" } else { "retries spent" })]
    Failed {
        /// The job's wire name.
        job: &'static str,
        /// The handler's error, with its source chain.
        error: String,
        /// Whether the error was permanent (else: retryable, retries spent).
        permanent: bool,
    },
    /// No reply within the call's timeout (the request carries the same
    /// deadline: a worker that finds it passed acks it unrun).
    #[error("no reply from job `{job}` within {timeout:?}")]
    Timeout {
        /// The job's wire name.
        job: &'static str,
        /// The call's timeout.
        timeout: Duration,
    },
    /// The connection (or the call channel) to RabbitMQ was lost while the
    /// call waited: its reply can no longer come.
    #[error("the connection to RabbitMQ was lost while waiting for the reply of job `{job}`")]
    ConnectionLost {
        /// The job's wire name.
        job: &'static str,
    },
    /// A request with this message id was processed before: the worker's
    /// inbox acked it without running it again.
    #[error("request {message_id} to job `{job}` was processed before; it was not run again")]
    Duplicate {
        /// The job's wire name.
        job: &'static str,
        /// The request's message id.
        message_id: String,
    },
    /// The reply did not decode as the job's output type.
    #[error("the reply of job `{job}` does not decode as its output type")]
    BadReply {
        /// The job's wire name.
        job: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be sent (serialized, published, confirmed).
    #[error(transparent)]
    Request(#[from] Error),
}

/// What came back for a call.
pub(super) struct Reply {
    body: Vec<u8>,
    error_kind: Option<String>,
    error: Option<String>,
}

/// A pending call hears its reply, or why none will come.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Reply, Lost>>>>>;

/// Why a pending call will get no reply.
enum Lost {
    /// The channel or connection went.
    Connection,
    /// The broker returned the request: no queue took it.
    Returned(Error),
}

/// A session's call channel and its pending calls.
pub(super) struct Caller {
    channel: Channel,
    pending: Pending,
}

impl Caller {
    /// Opens the call channel on `connection`: confirm mode, consuming
    /// direct reply-to, with a task that hands replies to their calls.
    pub(super) async fn open(connection: &Connection) -> Result<Self, Error> {
        let channel = bounded(
            || "open of the call channel".into(),
            connection.create_channel(),
        )
        .await?;
        bounded(
            || "enable publisher confirms on the call channel".into(),
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let mut replies = bounded(
            || format!("consume of `{DIRECT_REPLY_TO}`"),
            channel.basic_consume(
                DIRECT_REPLY_TO.into(),
                "eda-worker calls".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let pending: Pending = Arc::default();
        let reader = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let request_id = header_text(&delivery.properties, HEADER_REQUEST_ID);
                let waiting = request_id.as_ref().and_then(|id| lock(&reader).remove(id));
                let Some(waiting) = waiting else {
                    tracing::debug!(
                        request_id = ?request_id,
                        "a reply for no pending call (late, or not ours): dropped"
                    );
                    continue;
                };
                let _ = waiting.send(Ok(Reply {
                    error_kind: header_text(&delivery.properties, HEADER_ERROR_KIND),
                    error: header_text(&delivery.properties, HEADER_ERROR),
                    body: delivery.data,
                }));
            }
            // The consumer ended: the channel or the connection is gone.
            for (_, waiting) in lock(&reader).drain() {
                let _ = waiting.send(Err(Lost::Connection));
            }
        });
        Ok(Caller { channel, pending })
    }

    /// The calls waiting for their reply.
    pub(super) fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Whether the call channel can still carry calls.
    pub(super) fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes a request for job `job` to `queue` and waits up to
    /// `timeout` for its reply.
    pub(super) async fn call(
        &self,
        job: &'static str,
        queue: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let deadline_ms = crate::wire::now_millis()
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            HEADER_DEADLINE.into(),
            AMQPValue::LongLongInt(i64::try_from(deadline_ms).unwrap_or(i64::MAX)),
        );
        let properties = properties
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_headers(headers);
        let (sender, heard) = oneshot::channel();
        lock(&self.pending).insert(message_id.to_owned(), sender);
        // However the call ends, it leaves no pending entry behind.
        let _forget = Forget {
            pending: &self.pending,
            message_id,
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let published = async {
            let confirm = self
                .channel
                .basic_publish("".into(), queue.into(), options, body, properties)
                .await?;
            confirm.await
        };
        let publish_error = |source| {
            CallError::Request(Error::Broker {
                operation: format!("publish of request {message_id} to `{queue}`"),
                source,
            })
        };
        let confirmation = match tokio::time::timeout_at(deadline, published).await {
            Err(_elapsed) => return Err(CallError::Timeout { job, timeout }),
            Ok(Err(source)) => return Err(publish_error(source)),
            Ok(Ok(confirmation)) => confirmation,
        };
        match confirmation {
            Confirmation::Ack(returned) | Confirmation::Nack(returned) if returned.is_some() => {
                // A return rides on whichever confirm lapin completes next:
                // it belongs to the call with its message id, maybe another.
                if let Some(returned) = returned {
                    self.returned(&returned);
                }
            }
            Confirmation::Nack(_) => {
                return Err(CallError::Request(Error::Nacked {
                    message_id: message_id.to_owned(),
                    routing_key: queue.to_owned(),
                }));
            }
            _ => {}
        }
        match tokio::time::timeout_at(deadline, heard).await {
            Err(_elapsed) => Err(CallError::Timeout { job, timeout }),
            Ok(Err(_) | Ok(Err(Lost::Connection))) => Err(CallError::ConnectionLost { job }),
            Ok(Ok(Err(Lost::Returned(error)))) => Err(CallError::Request(error)),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }

    /// Tells the call whose request the broker returned.
    fn returned(&self, returned: &lapin::message::BasicReturnMessage) {
        let Some(id) = returned.properties.message_id().as_ref() else {
            return;
        };
        if let Some(waiting) = lock(&self.pending).remove(id.as_str()) {
            let _ = waiting.send(Err(Lost::Returned(Error::Unroutable {
                message_id: id.to_string(),
                exchange: returned.exchange.to_string(),
                routing_key: returned.routing_key.to_string(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            })));
        }
    }

    /// Closes the call channel (its pending calls hear that the connection is lost).
    pub(super) async fn close(&self) {
        if self.channel.status().connected() {
            let _ = bounded(
                || "close of the call channel".into(),
                self.channel.close(200, "client closed".into()),
            )
            .await;
        }
    }
}

impl Reply {
    /// The job's output, or the failure the reply carries.
    pub(super) fn into_output<T: serde::de::DeserializeOwned>(
        self,
        job: &'static str,
        message_id: &str,
    ) -> Result<T, CallError> {
        match self.error_kind.as_deref() {
            None => serde_json::from_slice(&self.body)
                .map_err(|source| CallError::BadReply { job, source }),
            Some("duplicate") => Err(CallError::Duplicate {
                job,
                message_id: message_id.to_owned(),
            }),
            Some(kind) => Err(CallError::Failed {
                job,
                error: self.error.unwrap_or_default(),
                permanent: kind == "permanent",
            }),
        }
    }
}

/// Removes a call's pending entry when the call ends, however it ends.
struct Forget<'a> {
    pending: &'a Pending,
    message_id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(self.message_id);
    }
}

fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Reply, Lost>>>> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}
