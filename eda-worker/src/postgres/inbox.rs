//! The inbox: a message id claimed in the handler's transaction, so that a
//! message whose effects committed is never run again; and its pruning, so
//! that it does not grow forever.

use std::time::Duration;

use sqlx::AssertSqlSafe;
use tokio_util::sync::CancellationToken;

use super::Database;
use super::transaction::{JobTransaction, begin_statement, literal};
use crate::retry::cancelled_within;

/// What beginning a job's transaction found.
pub(crate) enum Begun {
    /// A transaction for the handler, holding the message's inbox row
    /// (committed with the handler's writes).
    Open(JobTransaction),
    /// The message's effects committed before: ack it without running.
    AlreadyProcessed,
}

/// SQLSTATE 23505: a unique constraint refused a row.
const UNIQUE_VIOLATION: &str = "23505";

/// Begins the handler's transaction and claims `message_id` in it, in one
/// round trip: `BEGIN`, the lock timeout and the claim go as one statement
/// batch, with the values as escaped literals (see [`literal`]).
///
/// The claim is a plain `INSERT`: while another transaction holds an
/// uncommitted row for the same id (the same message delivered twice,
/// running on two workers), this one waits for it; if that one commits, the
/// insert fails as a duplicate and this one reports `AlreadyProcessed`
/// (PostgreSQL logs the refused row); if it rolls back, this one claims the
/// id and runs. The wait, and any lock wait of the handler's own
/// statements, is bounded by `lock_timeout` (the job's timeout and a margin:
/// a copy still running past that is stuck); past it, the statement fails
/// and the attempt is retried.
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
    let table = database.schema().table("inbox");
    let [Some(message_id), Some(job), Some(queue)] = [message_id, job, queue].map(literal) else {
        return Err(sqlx::Error::Encode(
            "the message id (or the job or queue name) holds a NUL byte, which PostgreSQL text cannot hold, so the inbox cannot claim it".into(),
        ));
    };
    let statement = format!(
        "{}; INSERT INTO {table} (message_id, job, queue) VALUES ({message_id}, {job}, {queue})",
        begin_statement(lock_timeout)
    );
    match JobTransaction::begin(database.pool(), statement).await {
        Ok(tx) => Ok(Begun::Open(tx)),
        Err(error) if is_duplicate(&error) => Ok(Begun::AlreadyProcessed),
        Err(error) => Err(error),
    }
}

/// Whether `error` is the inbox refusing a message id it holds.
fn is_duplicate(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|error| {
        error.code().as_deref() == Some(UNIQUE_VIOLATION) && error.table() == Some("inbox")
    })
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
