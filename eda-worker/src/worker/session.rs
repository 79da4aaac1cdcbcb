//! The worker's broker sessions: connect and declare the topology, run a
//! consumer per queue until shutdown or a loss, and reconnect with backoff
//! after a loss.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::consumer::{ConsumerEnd, ConsumerSettings, consume_queue};
use super::decision::Limits;
use super::dispatch::Dispatch;
use super::{Worker, jobs_outliving};
use crate::Error;
use crate::broker::{self, BROKER_CALL_TIMEOUT, ConnectPolicy, Publisher, QueueSpec};
use crate::error::error_chain_text;
use crate::retry::Backoff;
use crate::retry::{Pauses, RECONNECT, cancelled_within};

/// How often acks are flushed when a batch has not filled.
const ACK_INTERVAL: Duration = Duration::from_millis(10);

/// A session that lived this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// Confirm channels for retries, hops and dead letters, shared by the queues
/// of a worker, each with many publishes in flight (see `broker::Publisher`).
const REPUBLISH_CHANNELS: usize = 2;

/// Errors that reconnecting cannot fix.
fn is_fatal(error: &Error) -> bool {
    matches!(
        error,
        Error::QueueMismatch { .. } | Error::Connect { .. } | Error::InvalidUrl { .. }
    )
}

impl Worker {
    /// Runs broker sessions until `token` is cancelled or an error that
    /// reconnecting cannot fix.
    pub(super) async fn run_sessions(self, token: CancellationToken) -> Result<(), Error> {
        let consumer_timeout = self.config.consumer_timeout;
        let (prefetch, concurrency) = (self.config.effective_prefetch(), self.config.concurrency);
        let outliving: Vec<String> = jobs_outliving(
            self.queues.iter().flat_map(|jobs| jobs.definitions()),
            consumer_timeout,
            prefetch,
            concurrency,
        )
        .into_iter()
        .map(|(job, unacked)| {
            format!(
                "{} (timeout {}, unacked up to {})",
                job.name,
                humantime::format_duration(job.timeout),
                humantime::format_duration(unacked)
            )
        })
        .collect();
        if !outliving.is_empty() {
            tracing::warn!(
                jobs = %outliving.join(", "),
                prefetch,
                concurrency,
                consumer_timeout = %humantime::format_duration(consumer_timeout),
                "messages of these jobs may stay unacked longer than the broker's consumer_timeout (each may wait behind prefetch / concurrency other messages, then run up to its timeout): RabbitMQ would close the channel and the job would run again; lower --prefetch (EDA_PREFETCH) toward --concurrency, lower the jobs' timeouts, or raise consumer_timeout in rabbitmq.conf and pass it with --consumer-timeout"
            );
        }
        let mut started = false;
        let mut pauses = Pauses::new(RECONNECT);
        loop {
            let opened = tokio::select! {
                () = token.cancelled() => return Ok(()),
                opened = self.open(started) => opened,
            };
            let connections = match opened {
                Ok(connections) => connections,
                Err(error) if !started || is_fatal(&error) => return Err(error),
                Err(error) => {
                    let pause = pauses.next_pause();
                    tracing::error!(error = %error_chain_text(&error), retry_in = ?pause, "cannot set up the broker session; retrying");
                    if cancelled_within(pause, &token).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            started = true;
            let session_started = tokio::time::Instant::now();
            let end = self.run_session(&connections, &token).await;
            connections.close(broker::close_wait(end.is_err())).await;
            match end {
                Ok(()) => return Ok(()),
                Err(error) if token.is_cancelled() => {
                    // Stopping anyway; what was not acked is redelivered (and run again).
                    tracing::warn!(error = %error_chain_text(&error), "the broker went away while stopping; unacked messages will be redelivered");
                    return Ok(());
                }
                Err(error) if is_fatal(&error) => return Err(error),
                Err(error) => {
                    // A session that keeps dying at once (a deleted dead-letter queue that
                    // cannot be declared, say) backs off instead of spinning.
                    let pause = pauses.after_session(session_started.elapsed(), STABLE_SESSION);
                    tracing::error!(error = %error_chain_text(&error), retry_in = ?pause, "lost the broker; reconnecting");
                    if cancelled_within(pause, &token).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Opens the consuming and the publishing connection and declares every
    /// queue, its dead-letter queue and its delay queues. Before the first
    /// session the configured attempts apply and a refused login is fatal;
    /// after it, attempts are unbounded, refusals included (the caller stops
    /// them with the token).
    async fn open(&self, started: bool) -> Result<Connections, Error> {
        let policy = if started {
            let default = ConnectPolicy::default();
            // Once running, a refused login or vhost is waited out like any
            // outage: RabbitMQ refuses while a vhost restarts, or while an
            // LDAP server is away.
            ConnectPolicy {
                attempts: usize::MAX,
                backoff: Backoff {
                    max: RECONNECT.max,
                    ..default.backoff
                },
                retry_refusals: true,
                ..default
            }
        } else {
            ConnectPolicy {
                attempts: self.config.connect_attempts,
                ..ConnectPolicy::default()
            }
        };
        let (url, tls, name) = (
            &self.config.amqp_url,
            &self.config.tls,
            &self.config.connection_name,
        );
        let consuming = Arc::new(broker::connect(url, tls, name, policy).await?);
        let publishing = match broker::connect(url, tls, &format!("{name} publisher"), policy).await
        {
            Ok(publishing) => Arc::new(publishing),
            Err(error) => {
                close_connection(&consuming, BROKER_CALL_TIMEOUT).await;
                return Err(error);
            }
        };
        let connections = Connections {
            consuming,
            publishing,
        };
        if let Err(error) = self.declare(&connections.consuming).await {
            connections.close(BROKER_CALL_TIMEOUT).await;
            return Err(error);
        }
        Ok(connections)
    }

    /// Declares what this worker's queues need on a connection of its own,
    /// and closes it (see [`Worker::declare_topology`]). The configured
    /// connect attempts apply.
    pub(super) async fn declare_all(&self) -> Result<(), Error> {
        let policy = ConnectPolicy {
            attempts: self.config.connect_attempts,
            ..ConnectPolicy::default()
        };
        let name = format!("{} topology", self.config.connection_name);
        let connection =
            broker::connect(&self.config.amqp_url, &self.config.tls, &name, policy).await?;
        let declared = self.declare(&connection).await;
        close_connection(&connection, BROKER_CALL_TIMEOUT).await;
        declared
    }

    async fn declare(&self, connection: &Connection) -> Result<(), Error> {
        for jobs in &self.queues {
            broker::declare_queue(connection, &QueueSpec::job(jobs.queue, jobs.queue_type)).await?;
            broker::declare_dead_letter_queue(connection, jobs.queue, jobs.queue_type).await?;
            self.config
                .delay_queues
                .declare(connection, jobs.queue)
                .await?;
            for binding in jobs.bindings() {
                broker::bind_queue(connection, jobs.queue, &binding).await?;
            }
        }
        Ok(())
    }

    /// One session's life: a consumer per queue until shutdown or a loss of
    /// either connection.
    async fn run_session(
        &self,
        connections: &Connections,
        token: &CancellationToken,
    ) -> Result<(), Error> {
        let publisher = Arc::new(Publisher::new(
            connections.publishing.clone(),
            REPUBLISH_CHANNELS,
        ));
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
        for (connection, role) in [
            (&connections.consuming, "consuming"),
            (&connections.publishing, "publishing"),
        ] {
            let (connection, state, session) =
                (connection.clone(), self.broker.clone(), session.clone());
            consumers.spawn(async move {
                tokio::select! {
                    () = session.cancelled() => ConsumerEnd::Shutdown,
                    error = broker::watch(&connection, role, &state) => ConsumerEnd::Lost(error),
                }
            });
        }
        for jobs in &self.queues {
            let connection = connections.consuming.clone();
            let dispatch = Arc::new(Dispatch {
                jobs: jobs.clone(),
                publisher: publisher.clone(),
                delays: delays.clone(),
                limits: Limits {
                    max_size: self.config.max_message_size,
                    eta_horizon: self.config.eta_horizon,
                },
                database: self.config.database.clone(),
                declared: std::sync::Mutex::default(),
                declared_exchanges: std::sync::Mutex::default(),
                hold_limit: self.config.consumer_timeout / 2,
                broker: self.broker.clone(),
                session: session.clone(),
                health: self.health.clone(),
                max_starts: self.config.max_starts,
            });
            let session = session.clone();
            consumers
                .spawn(async move { consume_queue(connection, dispatch, settings, session).await });
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
        // A blocked connection sends no frame: its channels go with it.
        let wait = broker::close_wait(first_error.is_some());
        if !connections.publishing.status().blocked()
            && connections.publishing.status().connected()
            && tokio::time::timeout(wait, publisher.close()).await.is_err()
        {
            tracing::warn!(
                "the broker did not answer the close of the republishing channels in time"
            );
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A session's two connections. Retries, hops, dead letters and follow-ups go
/// out on the publishing one, so that a broker that blocks publishers (a
/// memory or disk alarm) never stops the acks of the consuming one, and the
/// consumers keep draining, which is what relieves the alarm.
struct Connections {
    consuming: Arc<Connection>,
    publishing: Arc<Connection>,
}

impl Connections {
    /// Closes both, each waiting up to `wait` for the broker's answer.
    async fn close(&self, wait: Duration) {
        tokio::join!(
            close_connection(&self.consuming, wait),
            close_connection(&self.publishing, wait)
        );
    }
}

/// Closes a connection, bounded by `wait`: a blocked connection (memory or
/// disk alarm) answers nothing.
async fn close_connection(connection: &Connection, wait: Duration) {
    if !connection.status().connected() {
        return;
    }
    if connection.status().blocked() {
        // lapin sends no frame on a blocked connection, the close included:
        // dropping it ends the socket, and the broker cleans up.
        tracing::info!("not closing a connection the broker blocks; dropping it");
        return;
    }
    let close = connection.close(200, "worker stopped".into());
    match tokio::time::timeout(wait, close).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(error = %error, "connection close failed"),
        Err(_) => tracing::warn!("the broker did not answer the connection close in time"),
    }
}
