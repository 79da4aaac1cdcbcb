//! Confirmed publishing: many publishes in flight per channel, each
//! caller told exactly whether a queue took its message.
//!
//! Driver tasks, each with one confirm-mode channel, take publishes from a
//! shared queue and pipeline them on their channel. The hard part is
//! `basic.return` (an unroutable `mandatory` message): the broker sends it
//! before the message's ack, and lapin hands it to whichever pending
//! confirm of the channel completes next, which may be another message's,
//! earlier or later. What makes it exact:
//!
//! - lapin keeps returns in arrival order and gives the oldest to each
//!   confirm it completes; the broker handles one channel's publishes in
//!   order, so the return of publish `k` comes after the returns of the
//!   publishes before it. Once every publish up to `k` is confirmed, the
//!   returns still waiting in lapin can only be later publishes' (each of
//!   them comes before its own ack), and the oldest of the waiting ones
//!   would be `k`'s: so `k`'s return, if any, has been handed to a confirm
//!   that completed before the last of those.
//! - The driver sees the confirms in the order lapin completed them (each
//!   wakes its future as it completes), so by then it has seen that return
//!   too, and matches it to its publish by message id.
//!
//! So a publish's verdict is given once every publish before it on the
//! channel, and itself, is confirmed: a watermark over the order in which
//! they went out, as with an ack tracker. A caller that gives up (a
//! timeout) only stops waiting: its publish stays, and so does the order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::BROKER_CALL_TIMEOUT;
use crate::Error;

/// Publishes in flight on one channel at most: past this, a driver takes no
/// more until confirms come back.
const IN_FLIGHT_MAX: usize = 1024;

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
        let drivers = (0..channels.max(1))
            .map(|_| {
                let driver = Driver::new(connection.clone());
                tokio::spawn(driver.run(queue.clone(), stop.clone()))
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
        self.send(Outgoing {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: message_id.to_owned(),
            body: body.to_vec(),
            properties,
        })
        .await
    }

    /// Publishes `messages`, pipelined, and waits for all their verdicts:
    /// one result per message, in order, as [`Publisher::publish`] would
    /// give it. Their message ids must be unique within the batch.
    pub(crate) async fn publish_batch(&self, messages: &[Outgoing]) -> Vec<Result<(), Error>> {
        join_all(messages.iter().cloned().map(|message| self.send(message))).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), Error> {
        let closed = |message: &Outgoing| Error::Broker {
            operation: format!(
                "publish of message {} to `{}`",
                message.message_id, message.routing_key
            ),
            source: not_connected("the publisher is closed"),
        };
        if self.stop.is_cancelled() {
            return Err(closed(&message));
        }
        let (verdict, heard) = oneshot::channel();
        let failed = closed(&message);
        if self.requests.send(Request { message, verdict }).is_err() {
            return Err(failed);
        }
        heard.await.unwrap_or(Err(failed))
    }

    /// Stops the drivers, each once what is in flight on it is told (bounded), and
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

/// A publish taken by a driver whose caller has not heard its verdict.
struct Waiting {
    /// The message without its body and properties, which went to lapin.
    message: Outgoing,
    verdict: oneshot::Sender<Result<(), Error>>,
    /// The message id its properties carry (absent: empty).
    wire_id: String,
}

/// A publish's confirm, back from lapin: which publish (its slot), its
/// place in the channel's order, and lapin's answer.
type Confirmed = (u64, u64, Result<Confirmation, lapin::Error>);

type Pending = FuturesUnordered<futures_util::future::BoxFuture<'static, Confirmed>>;

/// One confirm-mode channel and what is in flight on it.
struct Driver {
    connection: Arc<Connection>,
    channel: Option<Channel>,
    /// Hands out the channel's order: each publish takes the next number as
    /// it goes out (lapin assigns delivery tags then, in the same order).
    order: Arc<AtomicU64>,
    /// Every publish up to here (in that order) has been told its verdict.
    watermark: u64,
    /// Publishes taken and not yet told, by slot.
    waiting: HashMap<u64, Waiting>,
    next_slot: u64,
    /// Confirms in, by order, waiting for the watermark.
    confirmed: BTreeMap<u64, (u64, Result<Confirmation, lapin::Error>)>,
    /// Returns seen: message id (absent: empty) to the broker's reply code
    /// and text; kept while a publish with that id waits.
    returned: HashMap<String, (u16, String)>,
    /// Publishes waiting, by message id.
    waiting_ids: HashMap<String, usize>,
    /// A publish to a named exchange is in flight, alone.
    alone_in_flight: bool,
}

impl Driver {
    fn new(connection: Arc<Connection>) -> Self {
        Driver {
            connection,
            channel: None,
            order: Arc::new(AtomicU64::new(0)),
            watermark: 0,
            waiting: HashMap::new(),
            next_slot: 0,
            confirmed: BTreeMap::new(),
            returned: HashMap::new(),
            waiting_ids: HashMap::new(),
            alone_in_flight: false,
        }
    }

    async fn run(mut self, queue: flume::Receiver<Request>, stop: CancellationToken) {
        let mut pending: Pending = FuturesUnordered::new();
        // A publish to a named exchange, waiting for the channel to be idle.
        let mut alone: Option<Request> = None;
        loop {
            if self.waiting.is_empty() {
                self.alone_in_flight = false;
                if let Some(request) = alone.take() {
                    self.alone_in_flight = true;
                    self.send(request, &mut pending).await;
                }
            }
            let open = self.waiting.len() < IN_FLIGHT_MAX
                && alone.is_none()
                && !self.alone_in_flight
                && !stop.is_cancelled();
            tokio::select! {
                biased;
                Some(confirmed) = pending.next(), if !pending.is_empty() => self.confirmed(confirmed),
                request = queue.recv_async(), if open => match request {
                    Ok(request) if goes_alone(&request.message) && !self.waiting.is_empty() => {
                        alone = Some(request);
                    }
                    Ok(request) => {
                        self.alone_in_flight = goes_alone(&request.message);
                        self.send(request, &mut pending).await;
                    }
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            }
        }
        // What is in flight is told first, within a bound.
        let drained = async {
            while let Some(confirmed) = pending.next().await {
                self.confirmed(confirmed);
            }
        };
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, drained).await;
        for (_, waiting) in self.waiting.drain() {
            let stopped = not_connected("no confirm came before the publisher stopped");
            let _ = waiting
                .verdict
                .send(Err(publish_error(&waiting.message, stopped)));
        }
        if let Some(channel) = self.channel.take()
            && channel.status().connected()
        {
            let close = channel.close(200, "done".into());
            if let Ok(Err(error)) = tokio::time::timeout(BROKER_CALL_TIMEOUT, close).await {
                tracing::debug!(error = %error, "publishing channel close failed");
            }
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
            .map(|id| id.to_string())
            .unwrap_or_default();
        let exchange = ShortString::from(message.exchange.as_str());
        let routing_key = ShortString::from(message.routing_key.as_str());
        *self.waiting_ids.entry(wire_id.clone()).or_default() += 1;
        let slot = self.next_slot;
        self.next_slot += 1;
        self.waiting.insert(
            slot,
            Waiting {
                message,
                verdict,
                wire_id,
            },
        );
        let order = self.order.clone();
        pending.push(Box::pin(async move {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            // Taken in the same poll as lapin takes the delivery tag: same order.
            let place = order.fetch_add(1, Ordering::Relaxed);
            let confirm = channel
                .basic_publish(exchange, routing_key, options, &body, properties)
                .await;
            let confirm = match confirm {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            (slot, place, confirm)
        }));
    }

    /// This driver's channel, opened in confirm mode if it has none that is
    /// usable; failing with what failed and lapin's (cloneable) error. A
    /// channel is replaced only when nothing waits on it: a dead one fails
    /// every confirm in flight.
    async fn channel(&mut self) -> Result<Channel, (&'static str, lapin::Error)> {
        if let Some(channel) = &self.channel
            && (channel.status().connected() || !self.waiting.is_empty())
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
        // A new channel has an order of its own.
        self.order = Arc::new(AtomicU64::new(0));
        self.watermark = 0;
        self.confirmed.clear();
        self.returned.clear();
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Records a confirm and the returned message it carries, whichever
    /// publish that belongs to, then tells every publish the watermark passes.
    fn confirmed(&mut self, (slot, place, confirm): Confirmed) {
        if let Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) = &confirm
        {
            let id = returned
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            self.returned
                .insert(id, (returned.reply_code, returned.reply_text.to_string()));
        }
        self.confirmed.insert(place, (slot, confirm));
        while let Some(entry) = self.confirmed.first_entry()
            && *entry.key() == self.watermark
        {
            let (slot, confirm) = entry.remove();
            self.watermark += 1;
            self.tell(slot, confirm);
        }
    }

    /// Tells the caller of `slot` its verdict.
    fn tell(&mut self, slot: u64, confirm: Result<Confirmation, lapin::Error>) {
        let Some(waiting) = self.waiting.remove(&slot) else {
            return;
        };
        let verdict = verdict(
            &waiting.message,
            self.returned.get(&waiting.wire_id),
            confirm,
        );
        let _ = waiting.verdict.send(verdict);
        // A return stays while another publish with its id waits: two
        // publishes with one id both hear of it, rather than one hearing
        // of the other's.
        if let Some(count) = self.waiting_ids.get_mut(&waiting.wire_id) {
            *count -= 1;
            if *count == 0 {
                self.waiting_ids.remove(&waiting.wire_id);
                self.returned.remove(&waiting.wire_id);
            }
        }
    }
}

/// Whether `message` goes alone on its channel: one for a named exchange,
/// which may be missing, and publishing to a missing exchange closes the
/// channel and fails every publish in flight on it. The default exchange
/// always exists (a missing queue only returns the message).
fn goes_alone(message: &Outgoing) -> bool {
    !message.exchange.is_empty()
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
}
