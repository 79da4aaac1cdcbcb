//! One consumer per queue: prefetch, a bounded number of handlers in flight,
//! coalesced acks, and the graceful drain at shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ack::{AckTracker, Settlement};
use super::dispatch::{Dispatch, QueueJobs, handle_delivery};
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

type Finished = (u64, Settlement);

struct QueueConsumer {
    /// The consuming connection: once it is gone, nothing is sent on the
    /// channel (lapin may update the channel's status a moment later).
    connection: Arc<Connection>,
    channel: Channel,
    jobs: Arc<QueueJobs>,
    dispatch: Arc<Dispatch>,
    settings: ConsumerSettings,
    tracker: AckTracker<Acker>,
    in_flight: JoinSet<Finished>,
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
    let mut state = QueueConsumer {
        connection,
        channel,
        dispatch,
        jobs,
        settings,
        tracker: AckTracker::new(),
        in_flight: JoinSet::new(),
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
        let end = loop {
            let database_down = health.as_ref().is_some_and(|health| !*health.borrow());
            if database_down
                && self.dispatch.needs_database()
                && let Some(running) = consumer.take()
            {
                // Stop taking jobs the database would fail, and hand back the
                // prefetched ones for a worker that can run them.
                self.stop_consuming(running, BROKER_CALL_TIMEOUT).await;
                tracing::warn!(
                    queue,
                    "PostgreSQL is away: stopped taking jobs from this queue until it answers"
                );
            }
            let can_take = self.in_flight.len() < self.settings.concurrency;
            tokio::select! {
                biased;
                () = token.cancelled() => break ConsumerEnd::Shutdown,
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    // A delivery handed back (its retry or dead letter could not be
                    // published for a long while, or the database is away) is requeued
                    // with the next flush; the other deliveries and queues go on.
                    self.record(joined);
                    if self.tracker.finished_count() >= self.settings.ack_batch
                        && let Err(error) = self.flush(false).await {
                            break ConsumerEnd::Lost(error);
                        }
                }
                _ = flush_timer.tick(), if self.tracker.finished_count() > 0 => {
                    if let Err(error) = self.flush(true).await {
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
                delivery = next_delivery(&mut consumer), if can_take => match delivery {
                    Some(Ok(delivery)) => {
                        self.tracker.delivered(delivery.delivery_tag, delivery.acker.clone());
                        let dispatch = self.dispatch.clone();
                        self.in_flight.spawn(async move {
                            let tag = delivery.delivery_tag;
                            // handle_delivery catches handler panics itself; this is the last
                            // resort for a bug of ours, so that the delivery is still settled.
                            let settled = AssertUnwindSafe(handle_delivery(delivery, &dispatch)).catch_unwind().await;
                            (tag, settled.unwrap_or(Settlement::Requeue))
                        });
                    }
                    Some(Err(source)) => {
                        break ConsumerEnd::Lost(Error::Broker { operation: format!("consume from queue `{queue}`"), source });
                    }
                    None => {
                        break ConsumerEnd::Lost(Error::ConsumerCancelled { queue: queue.to_owned() });
                    }
                },
            }
        };
        // Stop deliveries before draining, and hand what was prefetched but not
        // started straight back, so that another worker can take it now rather
        // than when this one has finished draining.
        if let Some(consumer) = consumer {
            let lost = matches!(end, ConsumerEnd::Lost(_));
            self.stop_consuming(consumer, close_wait(lost)).await;
        }
        end
    }

    /// Cancels `consumer` (waiting up to `wait` for the broker) and hands
    /// back what it delivered but nothing started. Their tags are above
    /// every started one, so later multiple acks never cover them.
    async fn stop_consuming(&mut self, mut consumer: lapin::Consumer, wait: Duration) {
        let queue = self.jobs.queue;
        if !self.alive() {
            return;
        }
        let cancel = self
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        match tokio::time::timeout(wait, cancel).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(queue, error = %error, "could not cancel the consumer")
            }
            Err(_) => tracing::warn!(
                queue,
                "the broker did not answer the consumer cancel in time"
            ),
        }
        let mut returned = 0usize;
        while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            // Bounded: on a connection that just died, lapin may never answer.
            let nacked = tokio::time::timeout(wait, delivery.acker.nack(requeue)).await;
            if !matches!(nacked, Ok(Ok(true))) {
                break;
            }
            returned += 1;
        }
        if returned > 0 {
            tracing::info!(queue, returned, "returned unstarted messages to the queue");
        }
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
        if !self.in_flight.is_empty() {
            tracing::info!(
                queue,
                running = self.in_flight.len(),
                "waiting for running jobs to finish"
            );
        }
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some(joined) = self.in_flight.join_next() => { self.record(joined); }
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
                        running = self.in_flight.len(),
                        "shutdown timeout reached; unfinished jobs are not acked and will be redelivered"
                    );
                    break;
                }
            }
        }
        // Abort what still runs, but keep the results of tasks that finished
        // between the deadline and the abort: those get acked too.
        self.in_flight.abort_all();
        while let Some(joined) = self.in_flight.join_next().await {
            if !joined
                .as_ref()
                .is_err_and(tokio::task::JoinError::is_cancelled)
            {
                self.record(joined);
            }
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

    /// Records a finished handler task and returns how its delivery settles.
    fn record(&mut self, joined: Result<Finished, tokio::task::JoinError>) -> Option<Settlement> {
        match joined {
            Ok((tag, settlement)) => {
                self.tracker.finished(tag, settlement);
                Some(settlement)
            }
            // handle_delivery catches handler panics; a JoinError means the task was
            // aborted, and its message stays unacked for redelivery.
            Err(error) => {
                tracing::error!(queue = self.jobs.queue, error = %error, "job task ended abnormally");
                None
            }
        }
    }

    async fn flush(&mut self, stragglers: bool) -> Result<(), Error> {
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
        for op in ops {
            let send = async {
                match op.settlement {
                    Settlement::Ack => {
                        op.handle
                            .ack(BasicAckOptions {
                                multiple: op.multiple,
                            })
                            .await
                    }
                    Settlement::Requeue => {
                        op.handle
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await
                    }
                }
            };
            // Bounded: on a connection that just died, lapin may never answer.
            let Ok(sent) = tokio::time::timeout(BROKER_CALL_TIMEOUT, send).await else {
                return Err(Error::BrokerTimeout {
                    operation: format!("ack on queue `{}`", self.jobs.queue),
                    timeout: BROKER_CALL_TIMEOUT,
                });
            };
            match sent {
                Ok(true) => {}
                // lapin answers Ok(false) when the channel is already dead: nothing was sent.
                Ok(false) => {
                    return Err(Error::AckFailed {
                        queue: self.jobs.queue.to_owned(),
                        tag: op.tag,
                    });
                }
                Err(source) => {
                    return Err(Error::Broker {
                        operation: format!("ack on queue `{}`", self.jobs.queue),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}
