//! The relay: publishes committed outbox rows with confirms, then deletes
//! them. Several relays share the work: each claims a batch with
//! `FOR UPDATE SKIP LOCKED` and holds the row locks until its deletes commit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{self, ConnectPolicy, Outgoing, Publisher, QueueSpec, redact_url};
use crate::postgres::Database;
use crate::wire::{Envelope, now_millis};
use crate::{DelayQueues, Error, QueueType};

/// Rows claimed per pass.
pub const DEFAULT_BATCH: usize = 500;

/// How often the relay looks for rows when no NOTIFY woke it (a lost
/// notification, rows whose retry time has come).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Confirm channels of the relay: the publishes of a batch are pipelined
/// across them.
const RELAY_CHANNELS: usize = 256;

/// Batches a relay claims and publishes at once.
const PARALLEL_PASSES: usize = 4;

/// Database connections a relay holds at most: its LISTEN and its batches.
pub const RELAY_CONNECTIONS: usize = 1 + PARALLEL_PASSES;

/// The longest wait before a failing row is tried again.
const MAX_ROW_BACKOFF_SECS: f64 = 300.0;

/// How long a row's publish may wait for its confirm (a broker that blocks
/// publishers under a memory or disk alarm sends none); past it the row is
/// left for a later pass, uncharged.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// After its token is cancelled, how long the relay may take to settle the
/// batches it is publishing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A session that ran this long before failing was healthy: the next
/// reconnect starts again from the shortest pause.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// What became of one row's publish.
enum Sent {
    /// Confirmed by the broker: the row is deleted.
    Confirmed,
    /// Refused by the broker (nacked, returned, a channel error): counted
    /// against the row, which is tried again after a backoff.
    Refused(Error),
    /// Not settled (the connection went away, no confirm in time): left as
    /// it was for the next pass, uncharged.
    Unsettled,
}

/// Publishes the outbox of one database to RabbitMQ.
#[derive(Clone)]
pub struct Relay {
    database: Database,
    amqp_url: String,
    batch: usize,
    poll_interval: Duration,
    delays: DelayQueues,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("database", &self.database)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .field("delays", &self.delays)
            .finish()
    }
}

/// One outbox row.
struct OutboxRow {
    id: i64,
    message_id: Uuid,
    exchange: String,
    routing_key: String,
    queue_type: QueueType,
    job: Option<String>,
    correlation_id: Option<String>,
    eta_ms: Option<i64>,
    body: Vec<u8>,
    attempts: i32,
}

impl OutboxRow {
    /// The message's envelope, and its due time when that is still ahead.
    fn envelope(&self) -> (Envelope, Option<u64>) {
        let eta = self
            .eta_ms
            .and_then(|eta| u64::try_from(eta).ok())
            .filter(|eta| *eta > now_millis());
        let envelope = Envelope {
            message_id: self.message_id.to_string(),
            correlation_id: self.correlation_id.clone(),
            job: self.job.clone(),
            attempt: 0,
            eta,
        };
        (envelope, eta)
    }

    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let queue_type: String = row.try_get("queue_type")?;
        Ok(OutboxRow {
            id: row.try_get("id")?,
            message_id: row.try_get("message_id")?,
            exchange: row.try_get("exchange")?,
            routing_key: row.try_get("routing_key")?,
            queue_type: if queue_type == "quorum" {
                QueueType::Quorum
            } else {
                QueueType::Classic
            },
            job: row.try_get("job")?,
            correlation_id: row.try_get("correlation_id")?,
            eta_ms: row.try_get("eta_ms")?,
            body: row.try_get("body")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

impl Relay {
    /// A relay from `database`'s outbox to the broker at `amqp_url`.
    pub fn new(database: Database, amqp_url: impl Into<String>) -> Self {
        Relay {
            database,
            amqp_url: amqp_url.into(),
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

    /// How often to look for rows without a notification.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The delay queues scheduled rows go through.
    pub fn delay_queues(mut self, delays: DelayQueues) -> Self {
        self.delays = delays;
        self
    }

    /// Publishes rows until `token` is cancelled. Reconnects to the broker and
    /// the database when they go away, backing off; a row that keeps failing
    /// is counted, logged and tried again later, never in a hot loop.
    ///
    /// Cancelled, it finishes the batches in flight (up to 10 s) and stops.
    pub async fn run(self, token: CancellationToken) -> Result<(), Error> {
        let mut pause = Duration::from_secs(1);
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
            if started.elapsed() >= HEALTHY_SESSION {
                pause = Duration::from_secs(1);
            }
            match ended {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::error!(error = %crate::error::error_chain_text(&error), retry_in = ?pause, "outbox relay failed; starting again");
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One broker connection and one LISTEN connection, until an error or the token.
    async fn session(&self, token: &CancellationToken) -> Result<(), Error> {
        let connection = Arc::new(
            broker::connect(&self.amqp_url, "eda-worker relay", ConnectPolicy::default()).await?,
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

    /// Claims a batch, publishes it with confirms, deletes what was confirmed
    /// and reschedules what failed, in one transaction. Returns the rows claimed.
    async fn pass(
        &self,
        publisher: &Publisher,
        declared: &Mutex<HashSet<String>>,
    ) -> Result<usize, Error> {
        let schema = self.database.schema();
        let table = schema.table("outbox");
        let database_error = |operation: &str, source| Error::Database {
            operation: format!("{operation} (outbox of schema `{schema}`)"),
            source,
        };
        let mut tx = self
            .database
            .pool()
            .begin()
            .await
            .map_err(|source| database_error("begin", source))?;
        let claim = format!(
            "SELECT id, message_id, exchange, routing_key, queue_type, job, correlation_id, eta_ms, body, attempts \
             FROM {table} WHERE next_attempt_at <= now() ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let rows = sqlx::query(AssertSqlSafe(claim))
            .bind(i64::try_from(self.batch).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(|source| database_error("claim of a batch", source))?;
        let rows: Vec<OutboxRow> = rows
            .iter()
            .map(OutboxRow::from_row)
            .collect::<Result<_, _>>()
            .map_err(|source| database_error("read of a row", source))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let results = self.publish_rows(publisher, declared, &rows).await;
        let mut sent = Vec::new();
        let mut unsettled = 0_usize;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Sent::Confirmed => sent.push(row.id),
                Sent::Unsettled => unsettled += 1,
                Sent::Refused(error) => {
                    let text = crate::error::error_chain_text(&error);
                    let attempts = row.attempts.saturating_add(1);
                    let backoff = 2f64.powi(attempts.min(16)).min(MAX_ROW_BACKOFF_SECS);
                    tracing::warn!(
                        row = row.id,
                        message_id = %row.message_id,
                        attempts,
                        error = %text,
                        retry_in_secs = backoff,
                        "outbox row could not be published; it stays and is tried again"
                    );
                    let reschedule = format!(
                        "UPDATE {table} SET attempts = attempts + 1, last_error = $2, \
                         next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1"
                    );
                    sqlx::query(AssertSqlSafe(reschedule))
                        .bind(row.id)
                        .bind(text)
                        .bind(backoff)
                        .execute(&mut *tx)
                        .await
                        .map_err(|source| database_error("reschedule of a row", source))?;
                }
            }
        }
        if !sent.is_empty() {
            let delete = format!("DELETE FROM {table} WHERE id = ANY($1)");
            sqlx::query(AssertSqlSafe(delete))
                .bind(&sent)
                .execute(&mut *tx)
                .await
                .map_err(|source| database_error("delete of sent rows", source))?;
        }
        // A crash before this commit leaves the rows: they are sent again, with
        // the same message ids, and the consumers' inboxes drop the copies.
        tx.commit()
            .await
            .map_err(|source| database_error("commit", source))?;
        tracing::debug!(
            sent = sent.len(),
            claimed = rows.len(),
            unsettled,
            "outbox batch relayed"
        );
        Ok(rows.len())
    }

    /// Publishes a batch: the rows due now for the default exchange
    /// pipelined on one channel, the others one per channel; each settled within
    /// [`CONFIRM_TIMEOUT`]. One result per row, in order.
    async fn publish_rows(
        &self,
        publisher: &Publisher,
        declared: &Mutex<HashSet<String>>,
        rows: &[OutboxRow],
    ) -> Vec<Sent> {
        let mut results: Vec<Option<Sent>> = rows.iter().map(|_| None).collect();
        let mut now = Vec::new();
        let mut now_rows = Vec::new();
        let mut alone = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let prepared = async {
                let (envelope, eta) = row.envelope();
                self.declare(publisher, declared, row, eta.is_some())
                    .await?;
                Ok::<_, Error>((envelope.into_properties()?, eta))
            }
            .await;
            match prepared {
                // Only the default exchange always exists: a publish to a missing
                // named exchange closes its channel, which must not take the rest
                // of the batch with it, so such rows go one per channel, as do
                // scheduled rows (through their delay queues).
                Ok((properties, eta)) if !row.exchange.is_empty() || eta.is_some() => {
                    alone.push((index, properties, eta));
                }
                Ok((properties, _)) => {
                    now.push(Outgoing {
                        exchange: row.exchange.clone(),
                        routing_key: row.routing_key.clone(),
                        message_id: row.message_id.to_string(),
                        body: row.body.clone(),
                        properties,
                    });
                    now_rows.push(index);
                }
                Err(error) => {
                    results[index] = Some(settle(publisher, declared, row, Ok(Err(error))).await);
                }
            }
        }
        let pipelined = tokio::time::timeout(CONFIRM_TIMEOUT, publisher.publish_batch(&now));
        let alone = join_all(
            alone
                .into_iter()
                .map(|(index, properties, eta)| async move {
                    let row = &rows[index];
                    let published = tokio::time::timeout(
                        CONFIRM_TIMEOUT,
                        self.publish_alone(publisher, row, properties, eta),
                    )
                    .await;
                    (index, settle(publisher, declared, row, published).await)
                }),
        );
        let (pipelined, alone) = tokio::join!(pipelined, alone);
        match pipelined {
            Ok(published) => {
                // A channel error (say, a message the broker refuses as too
                // large) fails every later publish of the batch: only the first
                // is charged, the rest are left for the next pass.
                let mut channel_failed = false;
                for (index, published) in now_rows.into_iter().zip(published) {
                    let sent = match published {
                        Ok(()) | Err(Error::Unroutable { .. } | Error::Nacked { .. }) => {
                            settle(publisher, declared, &rows[index], Ok(published)).await
                        }
                        Err(_) if channel_failed => Sent::Unsettled,
                        Err(error) => {
                            channel_failed = true;
                            settle(publisher, declared, &rows[index], Ok(Err(error))).await
                        }
                    };
                    results[index] = Some(sent);
                }
            }
            Err(_elapsed) => {
                for index in now_rows {
                    results[index] = Some(Sent::Unsettled);
                }
            }
        }
        for (index, sent) in alone {
            results[index] = Some(sent);
        }
        results
            .into_iter()
            .map(|sent| sent.unwrap_or(Sent::Unsettled))
            .collect()
    }

    /// Publishes one row on a channel of its own: to its named exchange, or
    /// (scheduled for a job queue) through the queue's delay queues.
    async fn publish_alone(
        &self,
        publisher: &Publisher,
        row: &OutboxRow,
        properties: lapin::BasicProperties,
        eta: Option<u64>,
    ) -> Result<(), Error> {
        let message_id = row.message_id.to_string();
        match eta {
            // A scheduled row for a named exchange goes there at once: its
            // consumer holds it back until it is due.
            Some(eta) if row.exchange.is_empty() => self
                .delays
                .publish(
                    publisher,
                    &row.routing_key,
                    &message_id,
                    &row.body,
                    properties,
                    eta,
                )
                .await
                .map(|_bucket| ()),
            _ => {
                publisher
                    .publish(
                        &row.exchange,
                        &row.routing_key,
                        &message_id,
                        &row.body,
                        properties,
                    )
                    .await
            }
        }
    }

    /// Declares the queue of a row for the default exchange (and its delay
    /// queues when it is scheduled), once per relay session.
    async fn declare(
        &self,
        publisher: &Publisher,
        declared: &Mutex<HashSet<String>>,
        row: &OutboxRow,
        scheduled: bool,
    ) -> Result<(), Error> {
        if !row.exchange.is_empty() {
            return Ok(());
        }
        let queue = &row.routing_key;
        let key = declared_key(queue, scheduled);
        if declared.lock().await.contains(&key) {
            return Ok(());
        }
        broker::declare_queue(
            publisher.connection(),
            &QueueSpec::job(queue, row.queue_type),
        )
        .await?;
        if scheduled {
            self.delays.declare(publisher.connection(), queue).await?;
        }
        declared.lock().await.insert(key);
        Ok(())
    }
}

/// What became of a row whose publish returned `published` (an error for a
/// confirm that did not come in time).
async fn settle(
    publisher: &Publisher,
    declared: &Mutex<HashSet<String>>,
    row: &OutboxRow,
    published: Result<Result<(), Error>, tokio::time::error::Elapsed>,
) -> Sent {
    match published {
        Ok(Ok(())) => Sent::Confirmed,
        Ok(Err(error)) => {
            // Its queue may be gone: declared again on the next try.
            forget_declared(declared, row).await;
            // A lost connection is not the row's fault.
            if publisher.is_usable() {
                Sent::Refused(error)
            } else {
                Sent::Unsettled
            }
        }
        Err(_elapsed) => Sent::Unsettled,
    }
}

/// Forgets that `row`'s queues were declared, so that the next publish to
/// them declares them again (a queue deleted while the relay runs).
async fn forget_declared(declared: &Mutex<HashSet<String>>, row: &OutboxRow) {
    if row.exchange.is_empty() {
        let mut declared = declared.lock().await;
        declared.remove(&declared_key(&row.routing_key, false));
        declared.remove(&declared_key(&row.routing_key, true));
    }
}

/// What the relay remembers of a declared job queue (with its delay queues
/// when `scheduled`).
fn declared_key(queue: &str, scheduled: bool) -> String {
    if scheduled {
        format!("{queue} +delays")
    } else {
        queue.to_owned()
    }
}

/// What `worker outbox status` shows.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Rows waiting to be sent.
    pub pending: i64,
    /// Age of the oldest row, in seconds.
    pub oldest_age_secs: Option<f64>,
    /// Rows that failed at least once (up to 20), oldest first.
    pub failing: Vec<FailingRow>,
}

/// An outbox row that failed to publish.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct FailingRow {
    /// The row.
    pub id: i64,
    /// Its message id.
    pub message_id: String,
    /// Where it goes.
    pub routing_key: String,
    /// Failed publishes so far.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
}

/// The outbox's state in `database`.
pub async fn status(database: &Database) -> Result<OutboxStatus, Error> {
    let table = database.schema().table("outbox");
    let database_error = |source| Error::Database {
        operation: format!("read of {table}"),
        source,
    };
    let summary = format!(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM {table}"
    );
    let row = sqlx::query(AssertSqlSafe(summary))
        .fetch_one(database.pool())
        .await
        .map_err(database_error)?;
    let failing = format!(
        "SELECT id, message_id::text, routing_key, attempts, last_error FROM {table} \
         WHERE attempts > 0 ORDER BY id LIMIT 20"
    );
    let failing = sqlx::query(AssertSqlSafe(failing))
        .fetch_all(database.pool())
        .await
        .map_err(database_error)?
        .iter()
        .map(|row| {
            Ok(FailingRow {
                id: row.try_get(0)?,
                message_id: row.try_get(1)?,
                routing_key: row.try_get(2)?,
                attempts: row.try_get(3)?,
                last_error: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(database_error)?;
    Ok(OutboxStatus {
        pending: row.try_get(0).map_err(database_error)?,
        oldest_age_secs: row.try_get(1).map_err(database_error)?,
        failing,
    })
}
