//! The start ledger: a message that kills the worker (an abort, an
//! out-of-memory kill, a segfault in a native library) is redelivered to the
//! next worker and would kill it too, forever. Before a *redelivered*
//! message runs, its start is counted in `<schema>.job_starts`, committed
//! before the handler starts; the row goes when the message finishes. A
//! message whose count reaches the limit is dead-lettered instead of run.
//!
//! First deliveries are not counted (the hot path pays nothing), so the
//! count of a redelivered message takes its first delivery for a start: the
//! n-th redelivery finds n starts that never finished. A message handed back
//! unstarted (at a stop, during a database outage) is redelivered without a
//! recorded start, so it never gains more than that one.

use sqlx::AssertSqlSafe;

use crate::error::error_chain_text;
use crate::postgres::Database;

/// Records a start of a redelivered message and returns how many times it
/// started without finishing, its first delivery included.
pub(super) async fn record(
    database: &Database,
    queue: &str,
    message_id: &str,
) -> Result<u32, sqlx::Error> {
    let table = database.schema().table("job_starts");
    // `starts` counts the recorded starts, this one included; with the first
    // delivery's unrecorded one, that is how often it started before.
    let statement = format!(
        "INSERT INTO {table} AS s (queue, message_id, starts) VALUES ($1, $2, 1) \
         ON CONFLICT (queue, message_id) DO UPDATE SET starts = s.starts + 1, last_started_at = now() \
         RETURNING s.starts"
    );
    let starts: i32 = sqlx::query_scalar(AssertSqlSafe(statement))
        .bind(queue)
        .bind(message_id)
        .fetch_one(database.pool())
        .await?;
    Ok(u32::try_from(starts).unwrap_or(0))
}

/// Whether a message that started `starts` times without finishing is
/// past `limit` (0: no limit).
pub(super) fn too_many(starts: u32, limit: u32) -> bool {
    limit > 0 && starts >= limit
}

/// Forgets the starts of a message that finished (ran, or was dead-lettered
/// or retried). A failure is logged: the row is pruned later anyway.
pub(super) async fn clear(database: &Database, queue: &str, message_id: &str) {
    let table = database.schema().table("job_starts");
    let statement = format!("DELETE FROM {table} WHERE queue = $1 AND message_id = $2");
    if let Err(error) = sqlx::query(AssertSqlSafe(statement))
        .bind(queue)
        .bind(message_id)
        .execute(database.pool())
        .await
    {
        tracing::warn!(error = %error_chain_text(&error), "could not clear the job's start in the start ledger; it is pruned later");
    }
}

#[cfg(test)]
mod tests {
    use super::too_many;

    #[test]
    fn the_limit_is_reached_at_its_count_and_zero_turns_it_off() {
        assert!(!too_many(1, 5));
        assert!(!too_many(4, 5));
        assert!(too_many(5, 5));
        assert!(too_many(6, 5));
        assert!(!too_many(1000, 0));
    }
}
