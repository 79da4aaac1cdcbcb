//! The inbox: a message id claimed in the handler's transaction, so that a
//! message whose effects committed is never run again; and its pruning, so
//! that it does not grow forever.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::retry::cancelled_within;

/// What beginning a job's transaction found.
pub(crate) enum Begun {
    /// A transaction for the handler, holding the message's inbox row
    /// (committed with the handler's writes).
    Open(Transaction<'static, Postgres>),
    /// The message's effects committed before: ack it without running.
    AlreadyProcessed,
}

/// Begins the handler's transaction and claims `message_id` in it.
///
/// The claim is an `INSERT ... ON CONFLICT DO NOTHING`: while another
/// transaction holds an uncommitted row for the same id (the same message
/// delivered twice, running on two workers), this one waits for it; if that
/// one commits, this one finds the row and reports `AlreadyProcessed`; if it
/// rolls back, this one claims the id and runs. The wait, and any lock wait
/// of the handler's own statements, is bounded by `lock_timeout` (the job's
/// timeout and a margin: a copy still running past that is stuck); past it,
/// the statement fails and the attempt is retried.
///
/// The key is the queue and the message id: an event delivered to several
/// queues runs once in each.
pub(crate) async fn begin(
    database: &Database,
    message_id: &str,
    job: &str,
    queue: &str,
    lock_timeout: Duration,
) -> Result<Begun, sqlx::Error> {
    let mut tx = begin_transaction(database.pool(), lock_timeout).await?;
    let claim = format!(
        "INSERT INTO {} (message_id, job, queue) VALUES ($1, $2, $3) ON CONFLICT (queue, message_id) DO NOTHING",
        database.schema().table("inbox")
    );
    let claimed = sqlx::query(AssertSqlSafe(claim))
        .bind(message_id)
        .bind(job)
        .bind(queue)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(Begun::AlreadyProcessed);
    }
    Ok(Begun::Open(tx))
}

/// Begins a transaction whose lock waits end after `lock_timeout`, in one
/// round trip.
pub(crate) async fn begin_transaction(
    pool: &sqlx::PgPool,
    lock_timeout: Duration,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let lock_timeout_ms = lock_timeout.as_millis().clamp(1, i32::MAX as u128);
    let begin = format!("BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms}");
    pool.begin_with(AssertSqlSafe(begin)).await
}

/// Rows deleted per statement when pruning: small, so that no statement
/// holds many row locks or runs long.
const PRUNE_BATCH: i64 = 1000;

/// Deletes inbox rows processed more than `retention` ago, and start-ledger
/// rows last started that long ago (left by a worker that died between a
/// message's finish and the row's delete), in batches of 1000; returns how
/// many. A message redelivered after its inbox row was pruned would run
/// again: keep the retention well above any redelivery delay (the longest
/// retry backoff, a broker outage).
pub(crate) async fn prune(database: &Database, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for (table, time) in [("inbox", "processed_at"), ("job_starts", "last_started_at")] {
        total += prune_table(database, table, time, retention).await?;
    }
    Ok(total)
}

/// Deletes the rows of `table` whose `time` is more than `retention` ago.
async fn prune_table(
    database: &Database,
    table: &str,
    time: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let table = database.schema().table(table);
    let statement = format!(
        "DELETE FROM {table} WHERE (queue, message_id) IN (\
           SELECT queue, message_id FROM {table} \
           WHERE {time} < now() - make_interval(secs => $1) \
           ORDER BY {time} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    );
    let mut total = 0;
    loop {
        let deleted = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(retention.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(database.pool())
            .await?
            .rows_affected();
        total += deleted;
        if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// How often the worker prunes the inbox.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How soon after the worker starts it prunes the inbox first.
const FIRST_PRUNE: Duration = Duration::from_secs(5);

/// Prunes the inbox soon after start and then every [`PRUNE_INTERVAL`],
/// until `token` is cancelled. Failures are logged and tried next time.
pub(crate) async fn prune_periodically(
    database: Database,
    retention: Duration,
    token: CancellationToken,
) {
    let mut pause = FIRST_PRUNE;
    while !cancelled_within(pause, &token).await {
        match database.prune_inbox(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, retention = ?retention, "pruned the inbox"),
            Err(error) => tracing::warn!(
                error = %crate::error::error_chain_text(&error),
                "could not prune the inbox; trying again later"
            ),
        }
        pause = PRUNE_INTERVAL;
    }
}
