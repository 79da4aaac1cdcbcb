//! The worker runtime: one consumer per queue, bounded handlers, coalesced
//! acks, dead letters, reconnects, and a graceful stop on a cancellation token.
//!
//! The runtime never touches signals: the CLI owns them and cancels the
//! token, so tests stop a worker the same way.

mod ack;
mod consumer;
mod decision;
mod dispatch;

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::consumer::{BROKER_CALL_TIMEOUT, ConsumerEnd, ConsumerSettings, consume_queue};
use self::dispatch::{Dispatch, QueueJobs};
use crate::broker::{self, ConnectPolicy, Publisher, QueueSpec};
use crate::outbox::Relay;
use crate::{Error, JobDefinition, Registry, WorkerConfig};

/// How often acks are flushed when a batch has not filled.
const ACK_INTERVAL: Duration = Duration::from_millis(10);

/// Longest pause between two reconnects.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(30);

/// A session that lived this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Errors that reconnecting cannot fix.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error,
        Error::QueueMismatch { .. } | Error::Connect { .. } | Error::InvalidUrl { .. }
    )
}

/// Jobs whose timeout reaches the broker's consumer timeout: the broker would
/// close the channel under such a job while it still runs, and the message
/// would run again elsewhere.
fn jobs_outliving<'a>(
    jobs: impl IntoIterator<Item = &'a JobDefinition>,
    consumer_timeout: Duration,
) -> Vec<&'a JobDefinition> {
    jobs.into_iter()
        .filter(|job| job.timeout >= consumer_timeout)
        .collect()
}

/// How often the worker prunes the inbox.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Prunes the inbox soon after start and then every [`PRUNE_INTERVAL`],
/// until `token` is cancelled. Failures are logged and tried next time.
async fn prune_inbox(
    database: crate::postgres::Database,
    retention: Duration,
    token: CancellationToken,
) {
    let mut pause = Duration::from_secs(5);
    while !sleep_or_cancel(pause, &token).await {
        match database.prune_inbox(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, retention = ?retention, "pruned the inbox"),
            Err(error) => {
                tracing::warn!(error = %crate::error::error_chain_text(&error), "could not prune the inbox; trying again later")
            }
        }
        pause = PRUNE_INTERVAL;
    }
}

/// Sleeps for `pause`; true when `token` was cancelled meanwhile.
async fn sleep_or_cancel(pause: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(pause) => false,
    }
}

/// Confirm channels for retries, hops and dead letters, shared by the queues
/// of a worker: one publish in flight per channel (see `broker::Publisher`).
const REPUBLISH_CHANNELS: usize = 64;

/// Pause before reconnecting after the broker went away mid-run.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Database connections a worker may use at once: one per running job, the
/// relay's (LISTEN and its batches) and the pruner's.
pub fn database_connections(concurrency: usize, queues: usize, relay: bool) -> u32 {
    let jobs = concurrency.saturating_mul(queues);
    let relay = if relay {
        crate::outbox::RELAY_CONNECTIONS
    } else {
        0
    };
    u32::try_from(jobs.saturating_add(relay).saturating_add(1)).unwrap_or(u32::MAX)
}

/// A worker: consumes the queues of the registered jobs until cancelled.
///
/// ```no_run
/// use eda_worker::{Worker, WorkerConfig};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn demo() -> Result<(), eda_worker::Error> {
/// let token = CancellationToken::new();
/// let worker = Worker::new(WorkerConfig::from_env().queues(["email"]))?;
/// let running = tokio::spawn(worker.run(token.clone()));
/// // ... later, e.g. on SIGTERM:
/// token.cancel();
/// running.await.expect("worker task")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    queues: Vec<Arc<QueueJobs>>,
}

impl Worker {
    /// A worker for every `#[job]` linked into this binary.
    ///
    /// Fails when two jobs share a wire name, or the configuration names a
    /// queue no job uses.
    pub fn new(config: WorkerConfig) -> Result<Self, Error> {
        Self::with_registry(config, Registry::from_linked_jobs()?)
    }

    /// A worker for the jobs of `registry`.
    pub fn with_registry(config: WorkerConfig, registry: Registry) -> Result<Self, Error> {
        if config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if config.effective_prefetch() == 0 {
            return Err(Error::Config("prefetch must be at least 1".into()));
        }
        let known = registry.queues();
        let selected: Vec<&'static str> = if config.queues.is_empty() {
            known.clone()
        } else {
            config
                .queues
                .iter()
                .map(|wanted| {
                    known
                        .iter()
                        .copied()
                        .find(|queue| queue == wanted)
                        .ok_or_else(|| Error::UnknownQueue {
                            queue: wanted.clone(),
                            known: if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            },
                        })
                })
                .collect::<Result<_, _>>()?
        };
        if selected.is_empty() {
            return Err(Error::Config(
                "no job is registered: put #[job(queue = \"...\")] on an async fn linked into this binary".into(),
            ));
        }
        if config.database.is_none()
            && let Some(job) = registry
                .jobs()
                .find(|job| job.dedup == Some(true) && selected.contains(&job.queue))
        {
            return Err(Error::Config(format!(
                "job `{}` declares dedup = true, but no database is configured: set DATABASE_URL (or WorkerConfig::database), or remove `dedup = true`",
                job.function_path
            )));
        }
        let queues = selected
            .into_iter()
            .map(|queue| Arc::new(QueueJobs::new(queue, registry.jobs().copied())))
            .collect();
        Ok(Worker { config, queues })
    }

    /// The queues this worker consumes.
    pub fn queues(&self) -> Vec<&'static str> {
        self.queues.iter().map(|jobs| jobs.queue).collect()
    }

    /// Runs until `token` is cancelled, then stops gracefully: consumers are
    /// cancelled, running jobs get up to the shutdown timeout to finish, acks
    /// are flushed, and unstarted messages go back to the broker.
    ///
    /// At start, an unreachable broker is an error after the configured
    /// attempts, and a refused login at once. Once running, the worker rides
    /// out broker restarts: it reconnects for as long as it takes (backing off
    /// up to 30 s between attempts), and returns an error only for what
    /// waiting cannot fix: a queue declared with other arguments.
    pub async fn run(self, token: CancellationToken) -> Result<(), Error> {
        if let Some(database) = &self.config.database {
            // Before the relay and the pruner, which need the tables.
            if self.config.migrate {
                database.migrate().await?;
            }
            let needed = database_connections(
                self.config.concurrency,
                self.queues.len(),
                self.config.relay,
            );
            let size = database.pool().options().get_max_connections();
            if size < needed {
                tracing::warn!(
                    pool_size = size,
                    needed,
                    "the database pool is smaller than the jobs that may run at once with a transaction (concurrency x queues) plus the relay and the pruner: jobs will wait for a connection, and fail after the pool's acquire timeout"
                );
            }
        }
        // The outbox relay runs beside the consumers while a database is
        // configured, and stops with them.
        let relay = self
            .config
            .database
            .clone()
            .filter(|_| self.config.relay)
            .map(|database| {
                let relay = Relay::new(database, self.config.amqp_url.clone())
                    .delay_queues(self.config.delay_queues.clone());
                let relay_token = token.child_token();
                let task = tokio::spawn(relay.run(relay_token.clone()));
                (task, relay_token)
            });
        let pruner = self.config.database.clone().map(|database| {
            let pruner_token = token.child_token();
            let retention = self.config.inbox_retention;
            let task = tokio::spawn(prune_inbox(database, retention, pruner_token.clone()));
            (task, pruner_token)
        });
        let result = self.run_consumers(token).await;
        if let Some((task, pruner_token)) = pruner {
            pruner_token.cancel();
            if let Err(error) = task.await {
                tracing::error!(error = %error, "inbox pruning task failed");
            }
        }
        if let Some((task, relay_token)) = relay {
            relay_token.cancel();
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(error = %crate::error::error_chain_text(&error), "outbox relay failed")
                }
                Err(error) => tracing::error!(error = %error, "outbox relay task failed"),
            }
        }
        result
    }

    async fn run_consumers(self, token: CancellationToken) -> Result<(), Error> {
        let consumer_timeout = self.config.consumer_timeout;
        for job in jobs_outliving(
            self.queues.iter().flat_map(|jobs| jobs.definitions()),
            consumer_timeout,
        ) {
            tracing::warn!(
                job = job.name,
                timeout = %humantime::format_duration(job.timeout),
                consumer_timeout = %humantime::format_duration(consumer_timeout),
                "this job may run longer than the broker's consumer_timeout: RabbitMQ would close the channel under it and the job would run again; raise consumer_timeout in rabbitmq.conf above the job's timeout (plus the time a prefetched message waits) and pass it with --consumer-timeout, or lower the job's timeout"
            );
        }
        let mut started = false;
        let mut pause = RECONNECT_PAUSE;
        loop {
            let opened = tokio::select! {
                () = token.cancelled() => return Ok(()),
                opened = self.open(started) => opened,
            };
            let connection = match opened {
                Ok(connection) => Arc::new(connection),
                Err(error) if !started || is_fatal(&error) => return Err(error),
                Err(error) => {
                    tracing::error!(error = %crate::error::error_chain_text(&error), retry_in = ?pause, "cannot set up the broker session; retrying");
                    if sleep_or_cancel(pause, &token).await {
                        return Ok(());
                    }
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                    continue;
                }
            };
            started = true;
            let session_started = tokio::time::Instant::now();
            let end = self.run_session(&connection, &token).await;
            if connection.status().connected() {
                // Bounded: a blocked connection (memory or disk alarm) answers nothing.
                let close = connection.close(200, "worker stopped".into());
                match tokio::time::timeout(BROKER_CALL_TIMEOUT, close).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(error = %error, "connection close failed"),
                    Err(_) => {
                        tracing::warn!("the broker did not answer the connection close in time")
                    }
                }
            }
            match end {
                Ok(()) => return Ok(()),
                Err(error) if token.is_cancelled() => {
                    // Stopping anyway; what was not acked is redelivered (and run again).
                    tracing::warn!(error = %crate::error::error_chain_text(&error), "the broker went away while stopping; unacked messages will be redelivered");
                    return Ok(());
                }
                Err(error) if is_fatal(&error) => return Err(error),
                Err(error) => {
                    // A session that keeps dying at once (a deleted dead-letter queue that
                    // cannot be declared, say) backs off instead of spinning.
                    pause = if session_started.elapsed() < STABLE_SESSION {
                        (pause * 2).min(MAX_RECONNECT_PAUSE)
                    } else {
                        RECONNECT_PAUSE
                    };
                    tracing::error!(error = %crate::error::error_chain_text(&error), retry_in = ?pause, "lost the broker; reconnecting");
                    if sleep_or_cancel(pause, &token).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Connects and declares every queue and its dead-letter queue. Before the
    /// first session the configured attempts apply; after it, attempts are
    /// unbounded (the caller stops them with the token).
    async fn open(&self, started: bool) -> Result<Connection, Error> {
        let policy = if started {
            ConnectPolicy {
                attempts: usize::MAX,
                max_delay: MAX_RECONNECT_PAUSE,
                ..ConnectPolicy::default()
            }
        } else {
            ConnectPolicy {
                attempts: self.config.connect_attempts,
                ..ConnectPolicy::default()
            }
        };
        let connection =
            broker::connect(&self.config.amqp_url, &self.config.connection_name, policy).await?;
        for jobs in &self.queues {
            broker::declare_queue(&connection, &QueueSpec::job(jobs.queue, jobs.queue_type))
                .await?;
            broker::declare_queue(&connection, &QueueSpec::dead_letter(jobs.queue)).await?;
            self.config
                .delay_queues
                .declare(&connection, jobs.queue)
                .await?;
        }
        Ok(connection)
    }

    /// One connection's life: a consumer per queue until shutdown or a loss.
    async fn run_session(
        &self,
        connection: &Arc<Connection>,
        token: &CancellationToken,
    ) -> Result<(), Error> {
        let publisher = Arc::new(Publisher::new(connection.clone(), REPUBLISH_CHANNELS));
        let delays = Arc::new(self.config.delay_queues.clone());
        let settings = ConsumerSettings {
            concurrency: self.config.concurrency,
            prefetch: self.config.effective_prefetch(),
            ack_batch: self.config.ack_batch(),
            ack_interval: ACK_INTERVAL,
            shutdown_timeout: self.config.shutdown_timeout,
        };
        // A loss on one queue stops the others too, so that the session reconnects whole.
        let session = token.child_token();
        let mut consumers = JoinSet::new();
        for jobs in &self.queues {
            let connection = connection.clone();
            let dispatch = Arc::new(Dispatch {
                jobs: jobs.clone(),
                publisher: publisher.clone(),
                delays: delays.clone(),
                max_message_size: self.config.max_message_size,
                database: self.config.database.clone(),
                declared: std::sync::Mutex::default(),
            });
            let session = session.clone();
            consumers.spawn(async move {
                consume_queue(&connection, dispatch, settings, session).await
            });
        }
        let mut first_error = None;
        while let Some(joined) = consumers.join_next().await {
            let end = joined.unwrap_or_else(|join_error| {
                ConsumerEnd::Lost(Error::Config(format!(
                    "a consumer task failed: {join_error}"
                )))
            });
            if let ConsumerEnd::Lost(error) = end {
                session.cancel();
                first_error.get_or_insert(error);
            }
        }
        if tokio::time::timeout(BROKER_CALL_TIMEOUT, publisher.close())
            .await
            .is_err()
        {
            tracing::warn!(
                "the broker did not answer the close of the republishing channels in time"
            );
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[job(queue = "long-jobs-test", timeout = "45m")]
    async fn long_report(_ctx: JobContext, _args: ()) -> Result<(), JobError> {
        Ok(())
    }

    #[job(queue = "long-jobs-test", timeout = "1m")]
    async fn short_report(_ctx: JobContext, _args: ()) -> Result<(), JobError> {
        Ok(())
    }

    #[test]
    fn jobs_outliving_the_consumer_timeout_are_found() {
        let jobs = [
            JobDefinition::of::<long_report>("t::long_report"),
            JobDefinition::of::<short_report>("t::short_report"),
        ];
        let named: Vec<_> = jobs_outliving(&jobs, crate::DEFAULT_CONSUMER_TIMEOUT)
            .iter()
            .map(|job| job.name)
            .collect();
        assert_eq!(named, ["long_report"]);
        assert!(jobs_outliving(&jobs, Duration::from_secs(3600)).is_empty());
    }
}
