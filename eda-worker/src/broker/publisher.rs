//! Confirmed publishing, in batches over a few confirm-mode channels.
//!
//! lapin hands a `basic.return` (an unroutable mandatory message) to whichever
//! pending confirm of the channel completes next, not to the message it
//! belongs to. So each channel ("lane") is driven by one task that publishes a
//! batch of waiting requests, waits for all of their confirms, and only then
//! gives each caller its verdict: every return of the batch is in hand by
//! then (the broker sends a message's return before its ack, and nothing else
//! is in flight on the lane), and is matched to its caller by message id.
//! Callers never wait on a lock: they queue a request and await their answer,
//! while a batch of up to [`MAX_BATCH`] publishes shares one round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Publishes per batch and lane at most.
const MAX_BATCH: usize = 128;

/// Publishes with confirms through `lanes` confirm-mode channels of one connection.
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    lanes: Vec<mpsc::Sender<Request>>,
    next_lane: AtomicUsize,
    stop: CancellationToken,
    /// The lane drivers; dropping the publisher aborts them.
    drivers: Mutex<JoinSet<()>>,
}

/// One message to publish, and where its verdict goes.
struct Request {
    exchange: String,
    routing_key: String,
    message_id: String,
    body: Vec<u8>,
    properties: BasicProperties,
    verdict: oneshot::Sender<Result<(), Error>>,
}

impl Publisher {
    /// Starts `lanes` lane drivers; their channels open on first use.
    pub(crate) fn new(connection: Arc<Connection>, lanes: usize) -> Self {
        let stop = CancellationToken::new();
        let mut drivers = JoinSet::new();
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
                drivers.spawn(drive_lane(connection.clone(), receiver, stop.clone()));
                sender
            })
            .collect();
        Publisher {
            connection,
            lanes,
            next_lane: AtomicUsize::new(0),
            stop,
            drivers: Mutex::new(drivers),
        }
    }

    /// True while the connection is up.
    pub(crate) fn is_usable(&self) -> bool {
        self.connection.status().connected()
    }

    /// Publishes with `mandatory` set and waits for the broker's confirm.
    ///
    /// A nack, a message returned as unroutable, or a closed channel is an
    /// error: success means a queue has the message.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let (verdict, answer) = oneshot::channel();
        let request = Request {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: message_id.to_owned(),
            body,
            properties,
            verdict,
        };
        let lane = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let closed = || Error::PublisherClosed {
            message_id: message_id.to_owned(),
        };
        self.lanes[lane].send(request).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Stops the lanes and closes their channels (before the connection, so
    /// that lapin does not try to close them on a closing connection).
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        let mut drivers =
            std::mem::take(&mut *self.drivers.lock().unwrap_or_else(PoisonError::into_inner));
        while drivers.join_next().await.is_some() {}
    }
}

/// Publishes the lane's requests batch by batch until stopped.
async fn drive_lane(
    connection: Arc<Connection>,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    let mut channel: Option<Channel> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => 0,
            received = requests.recv_many(&mut batch, MAX_BATCH) => received,
        };
        if received == 0 {
            break;
        }
        let usable = channel
            .as_ref()
            .filter(|channel| channel.status().connected())
            .cloned();
        let lane_channel = match usable {
            Some(channel) => channel,
            None => match open_confirm_channel(&connection).await {
                Ok(opened) => {
                    channel = Some(opened.clone());
                    opened
                }
                Err(source) => {
                    for request in batch.drain(..) {
                        let error = Error::Broker {
                            operation: "open a publishing channel".into(),
                            source: source.clone(),
                        };
                        let _ = request.verdict.send(Err(error));
                    }
                    continue;
                }
            },
        };
        publish_batch(&lane_channel, batch.drain(..)).await;
    }
    if let Some(channel) = channel.filter(|channel| channel.status().connected())
        && let Err(error) = channel.close(200, "done".into()).await
    {
        tracing::debug!(error = %error, "publishing channel close failed");
    }
}

async fn open_confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// What a caller needs to hear about its message once the batch is confirmed.
struct Sent {
    exchange: String,
    routing_key: String,
    message_id: String,
    verdict: oneshot::Sender<Result<(), Error>>,
}

async fn publish_batch(channel: &Channel, batch: impl Iterator<Item = Request>) {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut sent = Vec::new();
    let mut confirms = Vec::new();
    for request in batch {
        let Request {
            exchange,
            routing_key,
            message_id,
            body,
            properties,
            verdict,
        } = request;
        let published = channel
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                options,
                &body,
                properties,
            )
            .await;
        match published {
            Ok(confirm) => {
                confirms.push(confirm);
                sent.push(Sent {
                    exchange,
                    routing_key,
                    message_id,
                    verdict,
                });
            }
            Err(source) => {
                let operation = format!("publish of message {message_id} to `{routing_key}`");
                let _ = verdict.send(Err(Error::Broker { operation, source }));
            }
        }
    }
    let confirmations = join_all(confirms).await;
    // Returned messages, by the id of the message they are, whichever confirm carried them.
    let mut returned = HashMap::new();
    for confirmation in &confirmations {
        if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) =
            confirmation
        {
            let id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            returned.insert(id, (message.reply_code, message.reply_text.to_string()));
        }
    }
    for (sent, confirmation) in sent.into_iter().zip(confirmations) {
        let verdict = match (confirmation, returned.get(&sent.message_id)) {
            (Err(source), _) => Err(Error::Broker {
                operation: format!(
                    "confirm of message {} to `{}`",
                    sent.message_id, sent.routing_key
                ),
                source,
            }),
            (Ok(_), Some((reply_code, reply_text))) => Err(Error::Unroutable {
                message_id: sent.message_id,
                exchange: sent.exchange,
                routing_key: sent.routing_key,
                reply_code: *reply_code,
                reply_text: reply_text.clone(),
            }),
            (Ok(Confirmation::Ack(_)), None) => Ok(()),
            (Ok(Confirmation::Nack(_)), None) => Err(Error::Nacked {
                message_id: sent.message_id,
                routing_key: sent.routing_key,
            }),
            (Ok(Confirmation::NotRequested), None) => Err(Error::Config(
                "publisher confirms are off on a publishing channel; this is a bug in eda-worker"
                    .into(),
            )),
        };
        // The caller may have gone away (a cancelled web request): nothing to tell then.
        let _ = sent.verdict.send(verdict);
    }
}
