//! [`DeadLetters`]: look at what is in `<queue>.dlq`, send dead letters back
//! to their job queue, or throw them away.
//!
//! Listing and replaying borrow messages with `basic.get` without acking them
//! and give back the ones they do not remove, so a classic queue keeps its
//! order. On a quorum queue each borrow counts as a delivery attempt.

use std::sync::Arc;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::queue_name as dead_letter_queue;
use crate::broker::{self, BROKER_CALL_TIMEOUT, ConnectPolicy, Publisher, bounded};
use crate::wire::short_string;
use crate::{Error, Tls};

use super::letter::{DeadLetter, replay_properties};

/// How long one replayed message may take to be confirmed.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The connection's name, as RabbitMQ's management tools show it.
const CONNECTION_NAME: &str = "eda-worker dlq";

/// Which dead letters [`DeadLetters::replay`] sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// The oldest dead letter with this message id.
    Id(String),
    /// Every dead letter in the queue when the replay starts.
    All,
}

/// A connection for inspecting and repairing dead-letter queues.
pub struct DeadLetters {
    connection: Arc<Connection>,
    publisher: Publisher,
}

impl DeadLetters {
    /// Connects to the broker at `url` (a few attempts with backoff; the
    /// password never shows in logs or errors).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with_tls(url, &Tls::default()).await
    }

    /// [`DeadLetters::connect`] with TLS files for an `amqps://` URL.
    pub async fn connect_with_tls(url: &str, tls: &Tls) -> Result<Self, Error> {
        let connection =
            Arc::new(broker::connect(url, tls, CONNECTION_NAME, ConnectPolicy::default()).await?);
        // Replays publish one message at a time.
        let publisher = Publisher::new(connection.clone(), 1);
        Ok(DeadLetters {
            connection,
            publisher,
        })
    }

    /// How many dead letters of `queue` are ready (not held by a consumer).
    pub async fn count(&self, queue: &str) -> Result<u32, Error> {
        let dead_letters = short_string("queue name", dead_letter_queue(queue))?;
        self.ready(&dead_letters).await
    }

    /// The first `limit` dead letters of `queue`, oldest first.
    ///
    /// Nothing is removed: the messages are borrowed and given back, and a
    /// classic queue keeps their order.
    pub async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        let dead_letters = short_string("queue name", dead_letter_queue(queue))?;
        let ready = self.ready(&dead_letters).await?;
        let wanted = limit.min(usize::try_from(ready).unwrap_or(usize::MAX));
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let mut borrowed = Borrowed::open(&self.connection, dead_letters).await?;
        let mut letters = Vec::with_capacity(wanted);
        let listed = async {
            while letters.len() < wanted {
                // The queue can shrink meanwhile: a purge, another replay.
                let Some((_, properties, body)) = borrowed.take().await? else {
                    break;
                };
                letters.push(DeadLetter::from_message(&properties, &body));
            }
            Ok::<_, Error>(())
        }
        .await;
        borrowed.give_back().await;
        listed.map(|()| letters)
    }

    /// Publishes dead letters of `queue` back to `queue` as first attempts,
    /// and returns how many.
    ///
    /// Each copy goes through the default exchange with the dead letter's
    /// properties (same message id, job and correlation id), without the
    /// dead-letter headers and with `x-eda-attempt` 0. A dead letter is removed
    /// only after the broker confirmed its copy; when a publish fails, that
    /// dead letter and all not yet replayed stay where they were, and the
    /// error is returned. Dead letters that arrive during the replay are left
    /// for the next one.
    pub async fn replay(&self, queue: &str, which: Replay) -> Result<usize, Error> {
        let dead_letters = short_string("queue name", dead_letter_queue(queue))?;
        let ready = self.ready(&dead_letters).await?;
        let mut borrowed = Borrowed::open(&self.connection, dead_letters.clone()).await?;
        let replayed = self
            .replay_borrowed(&mut borrowed, queue, &which, ready)
            .await;
        borrowed.give_back().await;
        match (replayed?, which) {
            (0, Replay::Id(message_id)) => Err(Error::DeadLetterNotFound {
                queue: dead_letters.to_string(),
                message_id,
            }),
            (replayed, _) => Ok(replayed),
        }
    }

    async fn replay_borrowed(
        &self,
        borrowed: &mut Borrowed,
        queue: &str,
        which: &Replay,
        ready: u32,
    ) -> Result<usize, Error> {
        let mut replayed = 0;
        // Bounded by the count seen at the start: a replayed job that fails again
        // comes back to the end of this queue, and must not be replayed twice.
        for _ in 0..ready {
            let Some((tag, properties, body)) = borrowed.take().await? else {
                break;
            };
            let message_id = properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default();
            if let Replay::Id(wanted) = which
                && *wanted != message_id
            {
                continue;
            }
            let replayed_copy = self.publisher.publish(
                "",
                queue,
                &message_id,
                &body,
                replay_properties(&properties),
            );
            // A broker that blocks publishers (an alarm) answers nothing.
            tokio::time::timeout(REPLAY_TIMEOUT, replayed_copy)
                .await
                .map_err(|_| Error::PublishTimeout {
                    message_id: message_id.clone(),
                    timeout: REPLAY_TIMEOUT,
                })??;
            borrowed
                .remove(tag)
                .await
                .map_err(|source| Error::ReplayNotAcked {
                    queue: queue.to_owned(),
                    message_id: message_id.clone(),
                    source: Box::new(source),
                })?;
            replayed += 1;
            tracing::info!(
                queue,
                dead_letter_queue = %borrowed.queue,
                message_id = %message_id,
                job = properties.kind().as_ref().map(ShortString::as_str),
                "dead letter replayed"
            );
            if matches!(which, Replay::Id(_)) {
                break;
            }
        }
        Ok(replayed)
    }

    /// Deletes every ready dead letter of `queue` and returns how many.
    pub async fn purge(&self, queue: &str) -> Result<u32, Error> {
        let dead_letters = short_string("queue name", dead_letter_queue(queue))?;
        // Purging a missing queue would fail with a bare NOT_FOUND; say which one.
        self.ready(&dead_letters).await?;
        let channel = self.channel(&dead_letters).await?;
        let purged = bounded(
            || format!("purge of `{dead_letters}`"),
            channel.queue_purge(dead_letters.clone(), QueuePurgeOptions::default()),
        )
        .await?;
        close_channel(&channel).await;
        tracing::info!(queue, dead_letter_queue = %dead_letters, purged, "dead letters purged");
        Ok(purged)
    }

    /// Closes the connection. Messages still borrowed (none, unless an
    /// operation was cancelled midway) go back to their queue.
    pub async fn close(self) -> Result<(), Error> {
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, self.publisher.close()).await;
        bounded(
            || "close of the connection".into(),
            self.connection.close(200, "dlq tool done".into()),
        )
        .await
    }

    /// Ready messages in `dead_letters`, by a passive declare on a channel of
    /// its own (a failed passive declare closes its channel).
    async fn ready(&self, dead_letters: &ShortString) -> Result<u32, Error> {
        let channel = self.channel(dead_letters).await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = bounded(
            || format!("passive declare of `{dead_letters}`"),
            channel.queue_declare(dead_letters.clone(), options, FieldTable::default()),
        )
        .await;
        match declared {
            Ok(declared) => {
                close_channel(&channel).await;
                Ok(declared.message_count())
            }
            Err(Error::Broker { source, .. }) if is_not_found(&source) => {
                Err(Error::DeadLetterQueueNotFound {
                    queue: dead_letters.to_string(),
                })
            }
            Err(error) => Err(error),
        }
    }

    async fn channel(&self, dead_letters: &ShortString) -> Result<Channel, Error> {
        bounded(
            || format!("open of a channel for `{dead_letters}`"),
            self.connection.create_channel(),
        )
        .await
    }
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

/// Messages taken from a queue with `basic.get` and not acked yet, on a
/// channel of their own so that giving them back touches nothing else.
struct Borrowed {
    channel: Channel,
    queue: ShortString,
    /// Delivery tags taken and not removed, in the order taken.
    held: Vec<u64>,
}

impl Borrowed {
    async fn open(connection: &Connection, queue: ShortString) -> Result<Self, Error> {
        let channel = bounded(
            || format!("open of a channel for `{queue}`"),
            connection.create_channel(),
        )
        .await?;
        Ok(Borrowed {
            channel,
            queue,
            held: Vec::new(),
        })
    }

    /// Takes the next message, or `None` when the queue is empty.
    async fn take(&mut self) -> Result<Option<(u64, BasicProperties, Vec<u8>)>, Error> {
        let got = bounded(
            || format!("basic.get from `{}`", self.queue),
            self.channel
                .basic_get(self.queue.clone(), BasicGetOptions { no_ack: false }),
        )
        .await?;
        Ok(got.map(|message| {
            let delivery = message.delivery;
            self.held.push(delivery.delivery_tag);
            (delivery.delivery_tag, delivery.properties, delivery.data)
        }))
    }

    /// Acks one taken message: it leaves the queue for good.
    async fn remove(&mut self, tag: u64) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await?;
        self.held.retain(|&held| held != tag);
        Ok(())
    }

    /// Gives every message not removed back to the queue, in place (one
    /// `multiple` nack up to the last one held), and closes the channel.
    ///
    /// Failures are logged, not returned: the broker gives back whatever a
    /// closed channel or connection held, so nothing is lost either way.
    async fn give_back(self) {
        if let Some(&last) = self.held.last() {
            let options = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(error) = self.channel.basic_nack(last, options).await {
                tracing::warn!(
                    queue = %self.queue,
                    held = self.held.len(),
                    error = %error,
                    "could not give dead letters back; they return when the channel closes"
                );
            }
        }
        close_channel(&self.channel).await;
    }
}

async fn close_channel(channel: &Channel) {
    if channel.status().connected()
        && let Err(error) = bounded(
            || "close of a channel".into(),
            channel.close(200, "done".into()),
        )
        .await
    {
        tracing::debug!(error = %error, "dlq channel close failed");
    }
}

/// The broker said the queue does not exist.
fn is_not_found(error: &lapin::Error) -> bool {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return false;
    };
    matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
