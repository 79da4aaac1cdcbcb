//! One pass of the relay: claim a batch of due rows (`FOR UPDATE SKIP
//! LOCKED`, so relays share the work), publish them, then delete what the
//! broker confirmed and reschedule what it refused, in one transaction.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::Relay;
use crate::broker::Publisher;
use crate::retry::Backoff;
use crate::wire::{Envelope, MessageId, now_millis};
use crate::{Error, ExchangeKind, QueueType};

/// The waits before a failing row is tried again: from 2 s, doubling, at most 5 min.
const ROW_BACKOFF: Backoff = Backoff {
    min: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

/// The wait before the next try of a row that failed `attempts` times (at least once).
fn row_backoff(attempts: i32) -> Duration {
    let retry = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0);
    ROW_BACKOFF.delay_now(retry)
}

/// What became of one row's publish.
pub(super) enum Sent {
    /// Confirmed by the broker: the row is deleted.
    Confirmed,
    /// Refused by the broker (nacked, returned, a channel error): counted
    /// against the row, which is tried again after a backoff.
    Refused(Error),
    /// Not settled (the connection went away, no confirm in time): left as
    /// it was for the next pass, uncharged.
    Unsettled,
}

/// One outbox row.
pub(super) struct OutboxRow {
    pub(super) id: i64,
    pub(super) message_id: MessageId,
    pub(super) exchange: String,
    /// The kind of an event row's exchange, which the relay declares.
    pub(super) exchange_kind: Option<ExchangeKind>,
    pub(super) routing_key: String,
    pub(super) queue_type: QueueType,
    pub(super) job: Option<String>,
    pub(super) correlation_id: Option<String>,
    pub(super) eta_ms: Option<i64>,
    pub(super) body: Vec<u8>,
    pub(super) attempts: i32,
}

impl OutboxRow {
    /// The message's envelope, and its due time when that is still ahead.
    pub(super) fn envelope(&self) -> (Envelope, Option<u64>) {
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
            message_id: MessageId::from(row.try_get::<Uuid, _>("message_id")?),
            exchange: row.try_get("exchange")?,
            exchange_kind: row
                .try_get::<Option<String>, _>("exchange_kind")?
                .as_deref()
                .and_then(ExchangeKind::from_name),
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
    /// Claims a batch, publishes it with confirms, deletes what was confirmed
    /// and reschedules what failed, in one transaction. Returns the rows claimed.
    pub(super) async fn pass(
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
            "SELECT id, message_id, exchange, exchange_kind, routing_key, queue_type, job, correlation_id, eta_ms, body, attempts \
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
                    let backoff = row_backoff(attempts).as_secs_f64();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_rows_wait_longer_each_time_up_to_five_minutes() {
        let nominal = |attempts| {
            let secs = row_backoff(attempts).as_secs_f64();
            assert!(secs <= 300.0, "{secs}");
            secs
        };
        assert!((2.0..=2.5).contains(&nominal(1)));
        assert!((3.0..=5.0).contains(&nominal(2)));
        assert!((96.0..=160.0).contains(&nominal(7)));
        assert!(nominal(40) >= 225.0);
        assert!(
            (2.0..=2.5).contains(&nominal(0)),
            "a count below one is the first failure"
        );
    }
}
