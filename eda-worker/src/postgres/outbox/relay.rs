//! The relay: publishes committed outbox rows with confirms, then deletes
//! them (one pass: `batch`, its publishes: `publish`). Several relays share
//! the work: each claims a batch with `FOR UPDATE SKIP LOCKED` and holds the
//! row locks until its deletes commit. This file is the loop around the
//! passes: its broker and LISTEN connections, wake-ups, reconnects, stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::postgres::PgListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, ConnectPolicy, Publisher, redact_url};
use crate::postgres::Database;
use crate::retry::{Pauses, RECONNECT, cancelled_within};
use crate::{DelayQueues, Error, Tls};

/// Rows claimed per pass.
pub const DEFAULT_BATCH: usize = 500;

/// How often the relay looks for rows when no NOTIFY woke it (a lost
/// notification, rows whose retry time has come).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Confirm channels of the relay: the publishes of a batch are pipelined
/// on them (see `broker::Publisher`).
const RELAY_CHANNELS: usize = 2;

/// Batches a relay claims and publishes at once.
const PARALLEL_PASSES: usize = 4;

/// Database connections a relay holds at most: its LISTEN and its batches.
pub const RELAY_CONNECTIONS: usize = 1 + PARALLEL_PASSES;

/// After its token is cancelled, how long the relay may take to settle the
/// batches it is publishing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A session that ran this long before failing was healthy: the next
/// reconnect starts again from the shortest pause.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Publishes the outbox of one database to RabbitMQ.
#[derive(Clone)]
pub struct Relay {
    pub(super) database: Database,
    amqp_url: String,
    tls: Tls,
    pub(super) batch: usize,
    poll_interval: Duration,
    pub(super) delays: DelayQueues,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("database", &self.database)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("tls", &self.tls)
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .field("delays", &self.delays)
            .finish()
    }
}

impl Relay {
    /// A relay from `database`'s outbox to the broker at `amqp_url`.
    pub fn new(database: Database, amqp_url: impl Into<String>) -> Self {
        Relay {
            database,
            amqp_url: amqp_url.into(),
            tls: Tls::default(),
            batch: DEFAULT_BATCH,
            poll_interval: DEFAULT_POLL_INTERVAL,
            delays: DelayQueues::default(),
        }
    }

    /// Rows claimed per pass.
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    setters! {
        /// TLS files for an `amqps://` URL (a CA, a client certificate).
        tls(Tls) => tls;
        /// How often to look for rows without a notification.
        poll_interval(Duration) => poll_interval;
        /// The delay queues scheduled rows go through.
        delay_queues(DelayQueues) => delays;
    }

    /// Publishes rows until `token` is cancelled. Reconnects to the broker and
    /// the database when they go away, backing off; a row that keeps failing
    /// is counted, logged and tried again later, never in a hot loop.
    ///
    /// Cancelled, it finishes the batches in flight (up to 10 s) and stops.
    pub async fn run(self, token: CancellationToken) -> Result<(), Error> {
        let mut pauses = Pauses::new(RECONNECT);
        loop {
            let started = std::time::Instant::now();
            let ended = tokio::select! {
                ended = self.session(&token) => ended,
                () = async {
                    token.cancelled().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "outbox relay stopped with batches unsettled; their rows are sent again later");
                    return Ok(());
                }
            };
            match ended {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let pause = pauses.after_session(started.elapsed(), HEALTHY_SESSION);
                    tracing::error!(error = %crate::error::error_chain_text(&error), retry_in = ?pause, "outbox relay failed; starting again");
                    if cancelled_within(pause, &token).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One broker connection and one LISTEN connection, until an error or the token.
    async fn session(&self, token: &CancellationToken) -> Result<(), Error> {
        let connection = Arc::new(
            broker::connect(
                &self.amqp_url,
                &self.tls,
                "eda-worker relay",
                ConnectPolicy::default(),
            )
            .await?,
        );
        let publisher = Publisher::new(connection.clone(), RELAY_CHANNELS);
        let schema = self.database.schema().clone();
        let database_error = |operation: &str, source| Error::Database {
            operation: format!("{operation} (outbox of schema `{schema}`)"),
            source,
        };
        let mut listener = PgListener::connect_with(self.database.pool())
            .await
            .map_err(|source| database_error("LISTEN connection", source))?;
        listener
            .listen(&format!("{schema}_outbox"))
            .await
            .map_err(|source| database_error("LISTEN", source))?;
        tracing::info!(schema = %schema, broker = %redact_url(&self.amqp_url), "outbox relay running");
        let declared = Mutex::new(HashSet::new());
        let ended = loop {
            if token.is_cancelled() {
                break Ok(());
            }
            // Several batches in flight at once: SKIP LOCKED gives each its own
            // rows, and one batch's database round trips overlap another's confirms.
            let passes =
                join_all((0..PARALLEL_PASSES).map(|_| self.pass(&publisher, &declared))).await;
            let claimed = match passes.into_iter().collect::<Result<Vec<usize>, Error>>() {
                Ok(claimed) => claimed.into_iter().max().unwrap_or(0),
                Err(error) => break Err(error),
            };
            if !publisher.is_usable() {
                break Err(Error::NotConnected {
                    url: redact_url(&self.amqp_url),
                    source: None,
                });
            }
            if claimed >= self.batch {
                continue; // more rows are waiting
            }
            tokio::select! {
                () = token.cancelled() => break Ok(()),
                notified = listener.recv() => {
                    if let Err(source) = notified {
                        break Err(database_error("receive of a notification", source));
                    }
                    // One pass serves all the commits notified so far.
                    while listener.next_buffered().is_some() {}
                }
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        };
        publisher.close().await;
        let _ = connection.close(200, "relay stopped".into()).await;
        ended
    }
}
