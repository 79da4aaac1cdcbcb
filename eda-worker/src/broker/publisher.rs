//! Confirmed publishing over a pool of confirm-mode channels.
//!
//! Each channel carries one publish at a time. lapin hands a `basic.return`
//! (an unroutable mandatory message) to whichever pending confirm of the
//! channel completes next, so with several publishes in flight on one channel
//! the wrong caller would hear of it and the right one would see a plain ack.
//! One publish per channel keeps that exact; the pool keeps callers
//! concurrent, their confirms pipelined across channels, and no lock is held
//! across a confirm. A batch known up front (the outbox relay's) goes
//! pipelined on one channel instead, its returns matched by message id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::join_all;
use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Semaphore;

use super::BROKER_CALL_TIMEOUT;
use crate::Error;

/// Publishes with confirms through up to `channels` confirm-mode channels of
/// one connection, opened as needed.
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    idle: Mutex<Vec<ConfirmChannel>>,
    slots: Semaphore,
}

impl Publisher {
    pub(crate) fn new(connection: Arc<Connection>, channels: usize) -> Self {
        Publisher {
            connection,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(channels.max(1)),
        }
    }

    /// The connection publishes go through (for declarations before them).
    pub(crate) fn connection(&self) -> &lapin::Connection {
        &self.connection
    }

    /// True while the connection is up.
    pub(crate) fn is_usable(&self) -> bool {
        self.connection.status().connected()
    }

    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let _slot = self.slot().await;
        let channel = self
            .check_out()
            .await
            .map_err(|(operation, source)| Error::Broker {
                operation: operation.into(),
                source,
            })?;
        let published = channel
            .publish(exchange, routing_key, message_id, body, properties)
            .await;
        self.check_in(channel);
        published
    }

    /// Publishes `messages` pipelined on one channel and waits for all their
    /// confirms: one result per message, in order, as [`Publisher::publish`]
    /// would give it.
    ///
    /// lapin may hand a returned (unroutable) message to the confirm of
    /// another message of the channel, so returns are matched to messages by
    /// their message id, which must be unique within the batch.
    pub(crate) async fn publish_batch(&self, messages: &[Outgoing]) -> Vec<Result<(), Error>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let _slot = self.slot().await;
        let channel = match self.check_out().await {
            Ok(channel) => channel,
            // Every message of the batch fails with the same error.
            Err((operation, source)) => {
                return messages
                    .iter()
                    .map(|_| {
                        Err(Error::Broker {
                            operation: operation.into(),
                            source: source.clone(),
                        })
                    })
                    .collect();
            }
        };
        let results = channel.publish_batch(messages).await;
        self.check_in(channel);
        results
    }

    /// A place among the channels in use (at most `channels` at once).
    async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the publisher's semaphore is never closed")
    }

    /// An idle channel that is still usable, or a new one; failing with what
    /// failed and lapin's (cloneable) error.
    async fn check_out(&self) -> Result<ConfirmChannel, (&'static str, lapin::Error)> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(channel) if channel.is_usable() => Ok(channel),
            _ => ConfirmChannel::open(&self.connection).await,
        }
    }

    /// Keeps `channel` for the next publish, unless it closed.
    fn check_in(&self, channel: ConfirmChannel) {
        if channel.is_usable() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(channel);
        }
    }

    /// Closes the idle channels (before the connection, so that lapin does not
    /// try to close them on a closing connection).
    pub(crate) async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for channel in idle {
            channel.close().await;
        }
    }
}

/// A message for [`Publisher::publish_batch`].
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// One channel in confirm mode.
struct ConfirmChannel {
    channel: Channel,
}

impl ConfirmChannel {
    /// Opens a channel on `connection` and turns on publisher confirms;
    /// failing with what failed and lapin's (cloneable) error.
    async fn open(connection: &Connection) -> Result<Self, (&'static str, lapin::Error)> {
        let timed_out = || {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {BROKER_CALL_TIMEOUT:?}"),
            ))
        };
        let channel = tokio::time::timeout(BROKER_CALL_TIMEOUT, connection.create_channel())
            .await
            .unwrap_or_else(|_| Err(timed_out()))
            .map_err(|source| ("open a publishing channel", source))?;
        tokio::time::timeout(
            BROKER_CALL_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| ("enable publisher confirms", source))?;
        Ok(ConfirmChannel { channel })
    }

    fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    async fn close(&self) {
        if self.is_usable()
            && let Err(error) = self.channel.close(200, "done".into()).await
        {
            tracing::debug!(error = %error, "publishing channel close failed");
        }
    }

    /// Publishes `messages` with `mandatory` set, pipelined, then waits for
    /// every confirm; returns are matched to messages by message id.
    async fn publish_batch(&self, messages: &[Outgoing]) -> Vec<Result<(), Error>> {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let published = self
                .channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    options,
                    &message.body,
                    message.properties.clone(),
                )
                .await;
            pending.push(published);
        }
        let confirms = join_all(pending.into_iter().map(|published| async move {
            match published {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            }
        }))
        .await;
        // Every returned message, whichever confirm lapin attached it to.
        let mut returned: HashMap<String, (u16, String)> = HashMap::new();
        let mut remember = |message: &BasicReturnMessage| {
            if let Some(id) = message.properties.message_id() {
                returned.insert(
                    id.to_string(),
                    (message.reply_code, message.reply_text.to_string()),
                );
            }
        };
        for confirm in &confirms {
            if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) =
                confirm
            {
                remember(message);
            }
        }
        if let Ok(more) = self.channel.wait_for_confirms().await {
            more.iter().for_each(&mut remember);
        }
        messages
            .iter()
            .zip(confirms)
            .map(|(message, confirm)| {
                let confirm = confirm.map_err(|source| Error::Broker {
                    operation: format!(
                        "publish of message {} to `{}`",
                        message.message_id, message.routing_key
                    ),
                    source,
                })?;
                if let Some((reply_code, reply_text)) = returned.get(&message.message_id) {
                    return Err(Error::Unroutable {
                        message_id: message.message_id.clone(),
                        exchange: message.exchange.clone(),
                        routing_key: message.routing_key.clone(),
                        reply_code: *reply_code,
                        reply_text: reply_text.clone(),
                    });
                }
                match confirm {
                    Confirmation::Ack(_) => Ok(()),
                    Confirmation::Nack(_) => Err(Error::Nacked {
                        message_id: message.message_id.clone(),
                        routing_key: message.routing_key.clone(),
                    }),
                    Confirmation::NotRequested => Err(Error::Config(
                        "publisher confirms are off on the publishing channel; this is a bug in eda-worker"
                            .into(),
                    )),
                }
            })
            .collect()
    }

    /// Publishes with `mandatory` set and waits for the broker's confirm.
    ///
    /// A nack, a message returned as unroutable, or a closed channel is an
    /// error: success means a queue has the message.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let broker_error = |source| Error::Broker {
            operation: format!("publish of message {message_id} to `{routing_key}`"),
            source,
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(broker_error)?
            .await
            .map_err(broker_error)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(Error::Unroutable {
                    message_id: message_id.to_owned(),
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(Error::Nacked {
                message_id: message_id.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::NotRequested => Err(Error::Config(
                "publisher confirms are off on the publishing channel; this is a bug in eda-worker"
                    .into(),
            )),
        }
    }
}
