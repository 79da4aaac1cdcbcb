//! Confirmed publishing: many publishes in flight per channel, each
//! caller told exactly whether a queue took its message.
//!
//! A few driver tasks, each with one confirm-mode channel, take publishes
//! from a shared queue and pipeline them on their channel. The hard part is
//! `basic.return` (an unroutable `mandatory` message): the broker sends it
//! before the message's ack, and lapin hands the oldest waiting return to
//! whichever pending confirm of the channel it completes next, which may be
//! another message's, earlier or later (a multiple ack completes its
//! confirms in no particular order). So a driver gathers its publishes in
//! rounds: a round takes publishes until its first confirm comes back or it
//! holds [`ROUND_MAX`], and ends when every confirm of the round has come
//! back, with nothing else in flight on the channel. Then no return can
//! still be waiting in lapin (each comes before its own ack, and each ack
//! takes one), every return of the round has been seen on some confirm of
//! the round, and each is matched to its publish by message id. The callers
//! hear their verdicts then, and the next round begins.
//!
//! One driver at a time takes publishes (it holds the intake, a semaphore
//! of one permit), and hands the intake on as its round stops taking them:
//! while one round waits for its last confirms, the next fills on another
//! channel, so that publishes flow without a pause at each round's end.
//!
//! A verdict given earlier, once every publish before it is confirmed,
//! would not be exact: the return of one publish may ride on the confirm of
//! a later one that a multiple ack completed first, and the driver may see
//! that confirm after the one it was waiting for.
//!
//! A caller that gives up (a timeout) only stops waiting: its publish stays
//! in its round, so the round still ends exactly. Publishes in one round
//! with the same message id (or none) all hear of a return with that id:
//! a publish that was stored may then be retried (a duplicate, which the
//! inbox drops), but none that was returned passes as stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::BROKER_CALL_TIMEOUT;
use crate::Error;

/// Publishes a round takes at most: past this, a driver waits for the
/// round's confirms before it takes more, so that its callers hear their
/// verdicts even while publishes keep coming.
const ROUND_MAX: usize = 128;

/// Publishes with confirms over `channels` confirm-mode channels of one
/// connection, opened as needed, with many publishes in flight on each.
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    requests: flume::Sender<Request>,
    stop: CancellationToken,
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

/// One publish handed to a driver, and where its verdict goes.
struct Request {
    message: Outgoing,
    verdict: oneshot::Sender<Result<(), Error>>,
}

impl Publisher {
    /// A publisher with `channels` drivers. Must be called within a Tokio runtime.
    pub(crate) fn new(connection: Arc<Connection>, channels: usize) -> Self {
        let (requests, queue) = flume::unbounded();
        let stop = CancellationToken::new();
        let intake = Arc::new(Semaphore::new(1));
        let drivers = (0..channels.max(1))
            .map(|_| {
                let driver = Driver {
                    connection: connection.clone(),
                    channel: None,
                    round: Round::default(),
                };
                tokio::spawn(driver.run(queue.clone(), intake.clone(), stop.clone()))
            })
            .collect();
        Publisher {
            connection,
            requests,
            stop,
            drivers: Mutex::new(drivers),
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

    /// Publishes with `mandatory` set and waits for the broker's verdict.
    ///
    /// A nack, a message returned as unroutable, or a closed channel is an
    /// error: success means a queue has the message.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let message = Outgoing::new(exchange, routing_key, message_id, body, properties);
        self.send(message).await
    }

    /// [`Publisher::publish`] to a named exchange that the caller declared
    /// on this publisher's connection: it shares rounds with other
    /// publishes rather than go alone.
    pub(crate) async fn publish_to_declared(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let message = Outgoing {
            exchange_declared: true,
            ..Outgoing::new(exchange, routing_key, message_id, body, properties)
        };
        self.send(message).await
    }

    /// Publishes `messages`, pipelined, and waits for all their verdicts:
    /// one result per message, in order, as [`Publisher::publish`] would
    /// give it. Their message ids must be unique within the batch.
    pub(crate) async fn publish_batch(&self, messages: &[Outgoing]) -> Vec<Result<(), Error>> {
        join_all(messages.iter().cloned().map(|message| self.send(message))).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        let closed =
            |message: &Outgoing| publish_error(message, not_connected("the publisher is closed"));
        if self.stop.is_cancelled() {
            return Err(closed(&message));
        }
        let (verdict, heard) = oneshot::channel();
        if let Err(flume::SendError(request)) = self.requests.send(Request { message, verdict }) {
            return Err(closed(&request.message));
        }
        // A driver answers every request it takes, even as it stops; only a
        // driver that panicked drops one unanswered.
        heard.await.unwrap_or_else(|_| {
            Err(Error::Broker {
                operation: "publish".to_owned(),
                source: not_connected("the publishing task ended without a verdict"),
            })
        })
    }

    /// Stops the drivers, each once its round has ended (bounded), and
    /// closes their channels (before the connection, so that lapin does not
    /// try to close them on a closing connection).
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        let drivers =
            std::mem::take(&mut *self.drivers.lock().unwrap_or_else(PoisonError::into_inner));
        for driver in drivers {
            let _ = driver.await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Drivers end when the queue closes too; this ends idle ones now.
        self.stop.cancel();
    }
}

/// A lapin error for a publish that never reached a channel.
fn not_connected(why: &str) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        why.to_owned(),
    ))
}

/// The publishes of one channel whose round has not ended.
#[derive(Default)]
struct Round {
    /// The publishes sent in this round, with their confirms once in.
    sent: Vec<Sent>,
    /// Returned messages seen in this round: message id (absent: empty) to
    /// the broker's reply code and text.
    returned: HashMap<String, (u16, String)>,
    /// A confirm of the round came back: the round takes no more publishes.
    confirming: bool,
}

struct Sent {
    /// The message without its body and properties, which went to lapin.
    message: Outgoing,
    verdict: oneshot::Sender<Result<(), Error>>,
    /// The message id its properties carry (absent: empty), when it is not
    /// `message.message_id`.
    wire_id: Option<String>,
    confirm: Option<Result<Confirmation, lapin::Error>>,
}

/// One channel and the round on it.
struct Driver {
    connection: Arc<Connection>,
    channel: Option<Channel>,
    round: Round,
}

type Pending = FuturesUnordered<
    futures_util::future::BoxFuture<'static, (usize, Result<Confirmation, lapin::Error>)>,
>;

impl Driver {
    async fn run(
        mut self,
        queue: flume::Receiver<Request>,
        intakes: Arc<Semaphore>,
        stop: CancellationToken,
    ) {
        let mut pending: Pending = FuturesUnordered::new();
        // A publish that goes in a round of its own, waiting for the current one to end.
        let mut alone: Option<Request> = None;
        // Held while this driver's round takes publishes.
        let mut intake: Option<OwnedSemaphorePermit> = None;
        loop {
            if pending.is_empty()
                && let Some(request) = alone.take()
            {
                self.send(request, &mut pending).await;
            }
            let open = self.round.sent.len() < ROUND_MAX
                && !self.round.confirming
                && alone.is_none()
                && !self
                    .round
                    .sent
                    .first()
                    .is_some_and(|sent| goes_alone(&sent.message))
                && !stop.is_cancelled();
            if !open {
                // The next publishes go to another driver's round.
                intake = None;
            }
            tokio::select! {
                biased;
                Some((index, confirm)) = pending.next(), if !pending.is_empty() => {
                    self.confirmed(index, confirm);
                    if pending.is_empty() {
                        self.end_round();
                    }
                }
                permit = intakes.clone().acquire_owned(), if open && intake.is_none() => {
                    intake = permit.ok();
                }
                request = queue.recv_async(), if open && intake.is_some() => match request {
                    Ok(request) if goes_alone(&request.message) && !pending.is_empty() => {
                        alone = Some(request);
                    }
                    Ok(request) => self.send(request, &mut pending).await,
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            }
        }
        // The round in progress ends first, within a bound.
        let drained = async {
            while let Some((index, confirm)) = pending.next().await {
                self.confirmed(index, confirm);
            }
        };
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, drained).await;
        self.end_round();
        if let Some(channel) = self.channel.take()
            && channel.status().connected()
        {
            let close = channel.close(200, "done".into());
            if let Ok(Err(error)) = tokio::time::timeout(BROKER_CALL_TIMEOUT, close).await {
                tracing::debug!(error = %error, "publishing channel close failed");
            }
        }
        // Publishes still queued hear that the publisher stopped, rather than
        // wait for it to be dropped.
        let stopped = alone
            .into_iter()
            .chain(std::iter::from_fn(|| queue.try_recv().ok()));
        for request in stopped {
            let error = publish_error(&request.message, not_connected("the publisher is closed"));
            let _ = request.verdict.send(Err(error));
        }
    }

    /// Publishes `request` on this driver's channel (opened if need be),
    /// pipelined: the publish and its confirm join `pending`, so that the
    /// driver takes the next request while lapin writes this one.
    async fn send(&mut self, request: Request, pending: &mut Pending) {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err((operation, source)) => {
                let _ = request.verdict.send(Err(Error::Broker {
                    operation: operation.into(),
                    source,
                }));
                return;
            }
        };
        let Request {
            mut message,
            verdict,
        } = request;
        let body = std::mem::take(&mut message.body);
        let properties = std::mem::take(&mut message.properties);
        let wire_id = properties
            .message_id()
            .as_ref()
            .is_none_or(|id| id.as_str() != message.message_id)
            .then(|| wire_id(&properties));
        let exchange = ShortString::from(message.exchange.as_str());
        let routing_key = ShortString::from(message.routing_key.as_str());
        let index = self.round.sent.len();
        self.round.sent.push(Sent {
            message,
            verdict,
            wire_id,
            confirm: None,
        });
        pending.push(Box::pin(async move {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let confirm = channel
                .basic_publish(exchange, routing_key, options, &body, properties)
                .await;
            let confirm = match confirm {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            (index, confirm)
        }));
    }

    /// This driver's channel, opened in confirm mode if it has none that is
    /// usable; failing with what failed and lapin's (cloneable) error. A
    /// channel is replaced only between rounds: a dead one fails every
    /// confirm of its round, which ends it.
    async fn channel(&mut self) -> Result<Channel, (&'static str, lapin::Error)> {
        if let Some(channel) = &self.channel
            && (channel.status().connected() || !self.round.sent.is_empty())
        {
            return Ok(channel.clone());
        }
        let timed_out = || not_connected(&format!("no answer within {BROKER_CALL_TIMEOUT:?}"));
        let channel = tokio::time::timeout(BROKER_CALL_TIMEOUT, self.connection.create_channel())
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
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Records the confirm of publish `index`, and the returned message it
    /// carries, whichever publish that belongs to.
    fn confirmed(&mut self, index: usize, confirm: Result<Confirmation, lapin::Error>) {
        if let Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) = &confirm
        {
            self.round.returned.insert(
                wire_id(&returned.properties),
                (returned.reply_code, returned.reply_text.to_string()),
            );
        }
        if let Some(sent) = self.round.sent.get_mut(index) {
            sent.confirm = Some(confirm);
        }
        self.round.confirming = true;
    }

    /// Every confirm of the round is in: tells each caller its verdict.
    fn end_round(&mut self) {
        let Round { sent, returned, .. } = std::mem::take(&mut self.round);
        for sent in sent {
            let message = &sent.message;
            let verdict = match sent.confirm {
                None => Err(publish_error(
                    message,
                    not_connected("no confirm came before the publisher stopped"),
                )),
                Some(confirm) => {
                    let wire_id = sent.wire_id.as_deref().unwrap_or(&message.message_id);
                    verdict(message, returned.get(wire_id), confirm)
                }
            };
            let _ = sent.verdict.send(verdict);
        }
    }
}

/// Whether `message` goes in a round of its own: one for a named exchange,
/// which may be missing, and publishing to a missing exchange closes the
/// channel and fails every publish in flight on it. The default exchange
/// always exists (a missing queue only returns the message).
fn goes_alone(message: &Outgoing) -> bool {
    !message.exchange.is_empty() && !message.exchange_declared
}

/// The message id `properties` carry (absent: empty), by which returns are
/// matched to publishes.
fn wire_id(properties: &BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default()
}

fn publish_error(message: &Outgoing, source: lapin::Error) -> Error {
    Error::Broker {
        operation: format!(
            "publish of message {} to `{}`",
            message.message_id, message.routing_key
        ),
        source,
    }
}

/// What the caller of `message` hears: its confirm, unless the broker
/// returned a message with its id.
fn verdict(
    message: &Outgoing,
    returned: Option<&(u16, String)>,
    confirm: Result<Confirmation, lapin::Error>,
) -> Result<(), Error> {
    let confirm = confirm.map_err(|source| publish_error(message, source))?;
    if let Some((reply_code, reply_text)) = returned {
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
}

/// A message for [`Publisher::publish_batch`].
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) message_id: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// This program declared the (named) exchange on this connection, so a
    /// publish to it shares rounds as one to the default exchange does. An
    /// exchange deleted since fails the publishes in flight beside it on
    /// its channel, each told so.
    pub(crate) exchange_declared: bool,
}

impl Outgoing {
    /// A publish of `body` with `properties`, to an exchange not declared
    /// by the caller.
    fn new(
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Self {
        Outgoing {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: message_id.to_owned(),
            body: body.to_vec(),
            properties,
            exchange_declared: false,
        }
    }
}
