//! One consumer per queue: prefetch, a bounded number of handlers in flight,
//! coalesced acks, and the graceful drain at shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ack::{AckOp, AckTracker, Settlement};
use super::dispatch::{Dispatch, QueueJobs, Received, handle_delivery};
use crate::Error;
use crate::broker::{BROKER_CALL_TIMEOUT, bounded, close_wait};

/// How one queue is consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsumerSettings {
    pub(crate) concurrency: usize,
    pub(crate) prefetch: u16,
    pub(crate) ack_batch: usize,
    pub(crate) ack_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Why a consumer stopped.
#[derive(Debug)]
pub(crate) enum ConsumerEnd {
    /// The token was cancelled and the drain is done.
    Shutdown,
    /// The channel, the connection or the consumer itself went away.
    Lost(Error),
}

/// A delivery whose handler finished, and how to settle it.
type Finished = (u64, Settlement);

/// At most this many deliveries that arrived together start as one task:
/// a task per job costs a spawn and a wake-up of another thread each, while
/// batches of this size still spread a busy queue's handlers over the
/// runtime's threads.
const BATCH_MAX: usize = 16;

struct QueueConsumer {
    /// The consuming connection: once it is gone, nothing is sent on the
    /// channel (lapin may update the channel's status a moment later).
    connection: Arc<Connection>,
    channel: Channel,
    jobs: Arc<QueueJobs>,
    dispatch: Arc<Dispatch>,
    settings: ConsumerSettings,
    tracker: AckTracker,
    /// The tasks running this queue's handlers, a batch of deliveries each.
    tasks: JoinSet<()>,
    /// Deliveries started whose handlers have not finished.
    running: usize,
    /// Where the tasks report each handler as it finishes.
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
}

/// Consumes `jobs.queue` until `token` is cancelled or the broker goes away,
/// then drains: see [`QueueConsumer::drain`].
pub(crate) async fn consume_queue(
    connection: Arc<Connection>,
    dispatch: Arc<Dispatch>,
    settings: ConsumerSettings,
    token: CancellationToken,
) -> ConsumerEnd {
    let jobs = dispatch.jobs.clone();
    let queue = jobs.queue;
    let on_queue = |operation: &'static str| move || format!("{operation} on queue `{queue}`");
    let channel = match bounded(on_queue("open of a channel"), connection.create_channel()).await {
        Ok(channel) => channel,
        Err(error) => return ConsumerEnd::Lost(error),
    };
    // Per consumer (global = false): each queue has its own prefetch window.
    let qos = channel.basic_qos(settings.prefetch, BasicQosOptions { global: false });
    if let Err(error) = bounded(on_queue("basic.qos"), qos).await {
        return ConsumerEnd::Lost(error);
    }
    let consumer = match start_consumer(&channel, queue).await {
        Ok(consumer) => consumer,
        Err(error) => return ConsumerEnd::Lost(error),
    };
    tracing::info!(
        queue,
        prefetch = settings.prefetch,
        concurrency = settings.concurrency,
        "consuming"
    );
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let mut state = QueueConsumer {
        connection,
        channel,
        dispatch,
        jobs,
        settings,
        tracker: AckTracker::new(),
        tasks: JoinSet::new(),
        running: 0,
        finished_tx,
        finished_rx,
    };
    let end = state.consume(consumer, &token).await;
    state.drain(end).await
}

/// `basic.consume` on `queue`, bounded.
async fn start_consumer(channel: &Channel, queue: &'static str) -> Result<lapin::Consumer, Error> {
    let consume = channel.basic_consume(
        queue.into(),
        // The broker makes up the tag: one built from the host name and queue
        // could pass the 255 bytes an AMQP short string holds.
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    bounded(|| format!("basic.consume on queue `{queue}`"), consume).await
}

/// The next delivery of `consumer`, or never while there is none (paused).
async fn next_delivery(
    consumer: &mut Option<lapin::Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

/// The next change of whether the database answers, or never without one.
async fn database_change(health: &mut Option<watch::Receiver<bool>>) {
    match health {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

impl QueueConsumer {
    /// Whether frames can still go out on the channel.
    fn alive(&self) -> bool {
        self.channel.status().connected() && self.connection.status().connected()
    }

    async fn consume(
        &mut self,
        consumer: lapin::Consumer,
        token: &CancellationToken,
    ) -> ConsumerEnd {
        let queue = self.jobs.queue;
        let mut consumer = Some(consumer);
        let mut health = self.dispatch.health.as_ref().map(|health| health.watch());
        let mut flush_timer = tokio::time::interval(self.settings.ack_interval);
        flush_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Made once: a `cancelled()` made per turn of the loop would register
        // with the token, and leave it, twice per job.
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let end = 'consuming: loop {
            let database_down = health.as_ref().is_some_and(|health| !*health.borrow());
            if database_down
                && self.dispatch.needs_database()
                && let Some(running) = consumer.take()
            {
                // Stop taking jobs the database would fail, and hand back the
                // prefetched ones for a worker that can run them. The channel
                // stays for a new consumer later, so every one must be handed
                // back: one left behind would sit below the new consumer's tags,
                // and its first multiple ack would ack it unrun. If that fails,
                // the channel goes, and the broker takes them all back.
                if !self.stop_consuming(running, BROKER_CALL_TIMEOUT).await {
                    break ConsumerEnd::Lost(Error::ConsumerPauseFailed {
                        queue: queue.to_owned(),
                    });
                }
                tracing::warn!(
                    queue,
                    "PostgreSQL is away: stopped taking jobs from this queue until it answers"
                );
            }
            let can_take = self.running < self.settings.concurrency;
            tokio::select! {
                biased;
                () = &mut cancelled => break ConsumerEnd::Shutdown,
                // Before the results: under load they never stop coming, and
                // finished deliveries behind a slow one must not wait for it.
                _ = flush_timer.tick(), if self.tracker.finished_count() > 0 => {
                    if let Err(error) = self.send_acks(true) {
                        break ConsumerEnd::Lost(error);
                    }
                }
                Some(finished) = self.finished_rx.recv() => {
                    // A delivery handed back (its retry or dead letter could not be
                    // published for a long while, or the database is away) is requeued
                    // with the next flush; the other deliveries and queues go on.
                    self.record(finished);
                    if self.tracker.finished_count() >= self.settings.ack_batch
                        && let Err(error) = self.send_acks(false) {
                            break ConsumerEnd::Lost(error);
                        }
                }
                () = database_change(&mut health) => {
                    let up = health.as_ref().is_some_and(|health| *health.borrow());
                    if up && consumer.is_none() {
                        match start_consumer(&self.channel, queue).await {
                            Ok(started) => {
                                tracing::info!(queue, "PostgreSQL answers: taking jobs from this queue again");
                                consumer = Some(started);
                            }
                            Err(error) => break ConsumerEnd::Lost(error),
                        }
                    }
                }
                delivery = next_delivery(&mut consumer), if can_take => {
                    // And the deliveries already here, up to the concurrency, as one batch.
                    let mut batch = Vec::new();
                    let mut next = Some(delivery);
                    let mut end = None;
                    while let Some(delivery) = next {
                        match delivery {
                            Some(Ok(delivery)) => batch.push(self.take(delivery)),
                            Some(Err(source)) => {
                                end = Some(Error::Broker { operation: format!("consume from queue `{queue}`"), source });
                                break;
                            }
                            None => {
                                end = Some(Error::ConsumerCancelled { queue: queue.to_owned() });
                                break;
                            }
                        }
                        let room = self.running + batch.len() < self.settings.concurrency && batch.len() < BATCH_MAX;
                        next = match &mut consumer {
                            Some(consumer) if room => consumer.next().now_or_never(),
                            _ => None,
                        };
                    }
                    self.start(batch);
                    if let Some(error) = end {
                        break 'consuming ConsumerEnd::Lost(error);
                    }
                }
            }
        };
        // Stop deliveries before draining, and hand what was prefetched but not
        // started straight back, so that another worker can take it now rather
        // than when this one has finished draining.
        if let Some(consumer) = consumer {
            let lost = matches!(end, ConsumerEnd::Lost(_));
            // Whatever is left, the channel's close hands back.
            self.stop_consuming(consumer, close_wait(lost)).await;
        }
        end
    }

    /// Tracks `delivery` for its ack and keeps what its handler needs.
    fn take(&mut self, delivery: lapin::message::Delivery) -> (u64, Received) {
        let lapin::message::Delivery {
            delivery_tag: tag,
            redelivered,
            routing_key,
            properties,
            data,
            ..
        } = delivery;
        // Settled by tag on the consumer's channel, not through the delivery's
        // acker: lapin sends each acker's frame from a task of its own, so that
        // two of them may go out in either order, and a multiple ack sent
        // before a single one it covers makes the broker close the channel.
        self.tracker.delivered(tag);
        let delivery = Received {
            redelivered,
            routing_key,
            properties,
            data,
        };
        (tag, delivery)
    }

    /// Starts the handlers of `batch` in one task.
    fn start(&mut self, batch: Vec<(u64, Received)>) {
        if batch.is_empty() {
            return;
        }
        self.running += batch.len();
        let dispatch = self.dispatch.clone();
        let finished = self.finished_tx.clone();
        self.tasks.spawn(run_batch(batch, dispatch, finished));
        // Tasks that ended are reaped here, one spawn at a time, so that the
        // set never grows past the batches in flight.
        while let Some(joined) = self.tasks.try_join_next() {
            reaped(self.jobs.queue, joined);
        }
    }

    /// Cancels `consumer` (waiting up to `wait` for the broker) and hands
    /// back what it delivered but nothing started. Their tags are above
    /// every started one, so the multiple acks of this consumer's deliveries
    /// never cover them. Says whether all of it went as it should: the
    /// cancel was confirmed and every unstarted delivery handed back.
    async fn stop_consuming(&mut self, mut consumer: lapin::Consumer, wait: Duration) -> bool {
        let queue = self.jobs.queue;
        if !self.alive() {
            return false;
        }
        let cancel = self
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        let mut clean = match tokio::time::timeout(wait, cancel).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(queue, error = %error, "could not cancel the consumer");
                false
            }
            Err(_) => {
                tracing::warn!(
                    queue,
                    "the broker did not answer the consumer cancel in time"
                );
                false
            }
        };
        let mut returned = 0usize;
        while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            // Bounded: on a connection that just died, lapin may never answer.
            let nacked = tokio::time::timeout(wait, delivery.acker.nack(requeue)).await;
            if !matches!(nacked, Ok(Ok(true))) {
                clean = false;
                break;
            }
            returned += 1;
        }
        if returned > 0 {
            tracing::info!(queue, returned, "returned unstarted messages to the queue");
        }
        clean
    }

    /// Lets running handlers finish for up to the shutdown timeout, acks what
    /// finished, and closes the channel so that the broker takes back every
    /// message that was prefetched but not handled (and any handler still
    /// running at the deadline, which is not acked and will be redelivered).
    async fn drain(mut self, end: ConsumerEnd) -> ConsumerEnd {
        let queue = self.jobs.queue;
        // With the channel gone, no ack can be sent: waiting would only delay the
        // reconnect, and the broker redelivers these messages anyway.
        let wait = if self.alive() {
            self.settings.shutdown_timeout
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + wait;
        let mut flush_timer = tokio::time::interval(self.settings.ack_interval);
        flush_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        if self.running > 0 {
            tracing::info!(
                queue,
                running = self.running,
                "waiting for running jobs to finish"
            );
        }
        while self.running > 0 {
            tokio::select! {
                Some(finished) = self.finished_rx.recv() => self.record(finished),
                // Ack as jobs finish: a SIGKILL at the end of a deploy's grace period
                // then redelivers only what had not finished.
                _ = flush_timer.tick(), if self.tracker.finished_count() > 0 => {
                    if let Err(error) = self.flush(true).await {
                        tracing::warn!(queue, error = %error, "acks failed while draining");
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        queue,
                        running = self.running,
                        "shutdown timeout reached; unfinished jobs are not acked and will be redelivered"
                    );
                    break;
                }
            }
        }
        // Abort what still runs, but keep the results of handlers that finished
        // between the deadline and the abort: those get acked too.
        self.tasks.abort_all();
        while let Some(joined) = self.tasks.join_next().await {
            reaped(queue, joined);
        }
        while let Ok(finished) = self.finished_rx.try_recv() {
            self.record(finished);
        }
        let flushed = self.flush(true).await;
        if self.alive() {
            let close = self.channel.close(200, "worker stopped".into());
            match tokio::time::timeout(BROKER_CALL_TIMEOUT, close).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(queue, error = %error, "could not close the channel cleanly")
                }
                Err(_) => {
                    tracing::warn!(queue, "the broker did not answer the channel close in time")
                }
            }
        }
        match (end, flushed) {
            (ConsumerEnd::Shutdown, Err(error)) => ConsumerEnd::Lost(error),
            (end, _) => end,
        }
    }

    /// Records a finished handler.
    fn record(&mut self, (tag, settlement): Finished) {
        self.running -= 1;
        self.tracker.finished(tag, settlement);
    }

    /// The acks and requeues that can be sent now, refused on a dead connection.
    fn settleable(&mut self, stragglers: bool) -> Result<Vec<AckOp>, Error> {
        let ops = self.tracker.take_ops(stragglers);
        if let Some(first) = ops.first()
            && !self.alive()
        {
            // Nothing goes out on a dead connection: the broker redelivers these.
            return Err(Error::AckFailed {
                queue: self.jobs.queue.to_owned(),
                tag: first.tag,
            });
        }
        Ok(ops)
    }

    /// Sends what can be settled now without waiting for lapin to write it:
    /// lapin queues an ack's frame at the first poll, and its answer only
    /// says that the frame was written. The consumer goes on meanwhile; a
    /// connection that dies before the write ends the consumer's stream, and
    /// the broker redelivers what was not acked.
    fn send_acks(&mut self, stragglers: bool) -> Result<(), Error> {
        for op in self.settleable(stragglers)? {
            if let Some(Err(source)) = settle(&self.channel, op).now_or_never() {
                return Err(self.ack_error(source));
            }
        }
        Ok(())
    }

    /// Settles what can be settled now and waits until lapin has written it
    /// (bounded): before the channel is closed, at the end of a drain.
    async fn flush(&mut self, stragglers: bool) -> Result<(), Error> {
        for op in self.settleable(stragglers)? {
            // Bounded: on a connection that just died, lapin may never answer.
            let Ok(sent) =
                tokio::time::timeout(BROKER_CALL_TIMEOUT, settle(&self.channel, op)).await
            else {
                return Err(Error::BrokerTimeout {
                    operation: format!("ack on queue `{}`", self.jobs.queue),
                    timeout: BROKER_CALL_TIMEOUT,
                });
            };
            if let Err(source) = sent {
                return Err(self.ack_error(source));
            }
        }
        Ok(())
    }

    /// The error of an ack or requeue that did not go out.
    fn ack_error(&self, source: lapin::Error) -> Error {
        Error::Broker {
            operation: format!("ack on queue `{}`", self.jobs.queue),
            source,
        }
    }
}

/// Sends the frame that settles `op` on `channel`: an ack (multiple or
/// not), or a requeue. The frame is queued, in order, at the first poll.
async fn settle(channel: &Channel, op: AckOp) -> Result<(), lapin::Error> {
    match op.settlement {
        Settlement::Ack => {
            let multiple = op.multiple;
            channel
                .basic_ack(op.tag, BasicAckOptions { multiple })
                .await
        }
        Settlement::Requeue => {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            channel.basic_nack(op.tag, requeue).await
        }
    }
}

/// Runs the handlers of one batch side by side and reports each as it
/// finishes.
async fn run_batch(
    batch: Vec<(u64, Received)>,
    dispatch: Arc<Dispatch>,
    finished: mpsc::UnboundedSender<Finished>,
) {
    let dispatch = &*dispatch;
    let run = |(tag, delivery): (u64, Received)| async move {
        // handle_delivery catches handler panics itself; this is the last
        // resort for a bug of ours, so that the delivery is still settled.
        let settled = AssertUnwindSafe(handle_delivery(delivery, dispatch))
            .catch_unwind()
            .await;
        (tag, settled.unwrap_or(Settlement::Requeue))
    };
    let mut running: FuturesUnordered<_> = batch.into_iter().map(run).collect();
    while let Some(done) = running.next().await {
        // The consumer holds the receiver until every task is joined.
        let _ = finished.send(done);
    }
}

/// Logs a handler task that ended other than by finishing or an abort: its
/// deliveries stay unacked and the broker redelivers them.
fn reaped(queue: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && !error.is_cancelled()
    {
        tracing::error!(queue, error = %error, "job task ended abnormally");
    }
}
