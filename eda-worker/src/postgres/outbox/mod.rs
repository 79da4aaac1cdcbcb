//! The transactional outbox: enqueue a job inside your own database
//! transaction. The row commits with your writes or not at all; the relay
//! ([`Relay`], inside `worker run` or alone as `worker relay`) publishes
//! committed rows with confirms and deletes them.
//!
//! ```no_run
//! # use eda_worker::prelude::*;
//! # #[derive(Serialize, Deserialize)] pub struct Welcome { pub user_id: i64 }
//! # #[job(queue = "email")]
//! # pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> { Ok(()) }
//! # async fn signup(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO users (id) VALUES (7)").execute(&mut *tx).await?;
//! eda_worker::outbox::enqueue(&mut tx, send_welcome, Welcome { user_id: 7 }).await?;
//! tx.commit().await?; // the user and the job, or neither
//! # Ok(()) }
//! ```
//!
//! A committed row is sent at least once, always with the message id fixed
//! at insert, so a re-send after a relay crash is dropped by the consuming
//! job's inbox.

mod batch;
mod publish;
mod relay;
mod status;

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection};

pub use relay::{DEFAULT_BATCH, DEFAULT_POLL_INTERVAL, RELAY_CONNECTIONS, Relay};
pub use status::{FailingRow, OutboxStatus, status};

use crate::postgres::Schema;
use crate::wire::{MessageId, Payload, now_millis};
use crate::{Error, Event, Job, QueueType};

/// Enqueues `job` through the outbox of the default schema, in the
/// transaction `tx` (a `&mut Transaction<Postgres>` or `&mut *ctx.tx().await?`).
/// Returns the message id the job will carry.
pub async fn enqueue<J: Job>(
    tx: &mut PgConnection,
    job: J,
    args: J::Args,
) -> Result<MessageId, Error> {
    Outbox::default().enqueue(tx, job, args).await
}

/// [`enqueue`], for a job due no earlier than `delay` after this call (the
/// due time is fixed at insert; a relay that sends the row later than that
/// sends it for running at once).
pub async fn enqueue_in<J: Job>(
    tx: &mut PgConnection,
    job: J,
    args: J::Args,
    delay: Duration,
) -> Result<MessageId, Error> {
    Outbox::default().enqueue_in(tx, job, args, delay).await
}

/// Publishes `event` through the outbox of the default schema, in the
/// transaction `tx`: the relay publishes it after commit, to its exchange
/// (declared as the event does). An event no queue takes is confirmed all
/// the same, and its row deleted. Returns the message id it will carry.
pub async fn publish<E: Event>(tx: &mut PgConnection, event: E) -> Result<MessageId, Error> {
    Outbox::default().publish(tx, event).await
}

/// The outbox of one schema (for apps that configured another than
/// `eda_worker`).
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    schema: Schema,
}

impl Outbox {
    /// The outbox in `schema`.
    pub fn in_schema(schema: Schema) -> Self {
        Outbox { schema }
    }

    /// See [`enqueue`].
    pub async fn enqueue<J: Job>(
        &self,
        tx: &mut PgConnection,
        job: J,
        args: J::Args,
    ) -> Result<MessageId, Error> {
        self.insert(tx, job, args, None).await
    }

    /// See [`enqueue_in`].
    pub async fn enqueue_in<J: Job>(
        &self,
        tx: &mut PgConnection,
        job: J,
        args: J::Args,
        delay: Duration,
    ) -> Result<MessageId, Error> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let eta = now_millis().saturating_add(delay_ms);
        self.insert(tx, job, args, Some(eta)).await
    }

    /// See [`publish`].
    pub async fn publish<E: Event>(
        &self,
        tx: &mut PgConnection,
        event: E,
    ) -> Result<MessageId, Error> {
        self.publish_correlated(tx, event, None).await
    }

    /// [`Outbox::publish`] carrying `correlation_id` (for `ctx.publish`).
    pub(crate) async fn publish_correlated<E: Event>(
        &self,
        tx: &mut PgConnection,
        event: E,
        correlation_id: Option<String>,
    ) -> Result<MessageId, Error> {
        let body = serde_json::to_vec(&event).map_err(|source| Error::Serialize {
            payload: Payload::Event(E::NAME),
            source,
        })?;
        let row = Row {
            exchange: E::EXCHANGE,
            exchange_kind: Some(E::KIND.as_str()),
            routing_key: E::ROUTING_KEY,
            queue_type: QueueType::Classic,
            name: E::NAME,
            correlation_id,
            eta_ms: None,
            body,
        };
        self.insert_row(tx, row).await
    }

    /// [`Outbox::enqueue`] carrying `correlation_id` (for `ctx.enqueue`).
    pub(crate) async fn enqueue_correlated<J: Job>(
        &self,
        tx: &mut PgConnection,
        job: J,
        args: J::Args,
        correlation_id: String,
    ) -> Result<MessageId, Error> {
        self.insert_with(tx, job, args, None, Some(correlation_id))
            .await
    }

    async fn insert<J: Job>(
        &self,
        tx: &mut PgConnection,
        job: J,
        args: J::Args,
        eta_ms: Option<u64>,
    ) -> Result<MessageId, Error> {
        self.insert_with(tx, job, args, eta_ms, None).await
    }

    async fn insert_with<J: Job>(
        &self,
        tx: &mut PgConnection,
        _job: J,
        args: J::Args,
        eta_ms: Option<u64>,
        correlation_id: Option<String>,
    ) -> Result<MessageId, Error> {
        let body = serde_json::to_vec(&args).map_err(|source| Error::Serialize {
            payload: Payload::Job(J::NAME),
            source,
        })?;
        let row = Row {
            exchange: "",
            exchange_kind: None,
            routing_key: J::QUEUE,
            queue_type: J::QUEUE_TYPE,
            name: J::NAME,
            correlation_id,
            eta_ms,
            body,
        };
        self.insert_row(tx, row).await
    }

    async fn insert_row(&self, tx: &mut PgConnection, row: Row) -> Result<MessageId, Error> {
        let message_id = MessageId::new();
        let statement = format!(
            "INSERT INTO {} (message_id, exchange, exchange_kind, routing_key, queue_type, job, correlation_id, eta_ms, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            self.schema.table("outbox")
        );
        sqlx::query(AssertSqlSafe(statement))
            .bind(message_id.as_uuid())
            .bind(row.exchange)
            .bind(row.exchange_kind)
            .bind(row.routing_key)
            .bind(row.queue_type.as_str())
            .bind(row.name)
            .bind(row.correlation_id)
            .bind(row.eta_ms.map(|eta| i64::try_from(eta).unwrap_or(i64::MAX)))
            .bind(row.body)
            .execute(tx)
            .await
            .map_err(|source| Error::Database {
                operation: format!("insert into the outbox of schema `{}`", self.schema),
                source,
            })?;
        Ok(message_id)
    }
}

/// What one outbox row holds: a job for its queue, or an event for its exchange.
struct Row {
    exchange: &'static str,
    exchange_kind: Option<&'static str>,
    routing_key: &'static str,
    queue_type: QueueType,
    /// The wire name.
    name: &'static str,
    correlation_id: Option<String>,
    eta_ms: Option<u64>,
    body: Vec<u8>,
}
