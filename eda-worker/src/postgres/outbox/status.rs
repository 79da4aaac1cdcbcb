//! `worker outbox status`: what is waiting in the outbox, and what keeps failing.

use sqlx::{AssertSqlSafe, Row};

use crate::Error;
use crate::postgres::Database;
use crate::wire::MessageId;

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
        "SELECT id, message_id, routing_key, attempts, last_error FROM {table} \
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
                message_id: MessageId::from(row.try_get::<uuid::Uuid, _>(1)?).to_string(),
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
