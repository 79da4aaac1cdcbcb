//! Jobs of the inbox tests: they write their effect into an app table in
//! the job's transaction, which the inbox row commits with.

use std::time::Duration;

use eda_worker::prelude::*;
use sqlx::{Connection, PgConnection};

use super::record;

/// Arguments of the jobs that write to the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbWrite {
    /// The app table the job writes its effect into (schema-qualified).
    pub table: String,
    /// A value to write.
    pub n: u32,
    /// How long to hold the transaction open after writing, ms.
    pub hold_ms: u64,
    /// Fail (permanently) after writing.
    pub fail: bool,
}

impl DbWrite {
    /// Writes `n` into `table` and succeeds at once.
    pub fn new(table: &str, n: u32) -> Self {
        DbWrite {
            table: table.to_owned(),
            n,
            hold_ms: 0,
            fail: false,
        }
    }
}

/// Inserts `(message_id, n)` into `args.table` in the job's transaction.
async fn insert_effect(
    ctx: &JobContext,
    tx: &mut PgConnection,
    args: &DbWrite,
) -> Result<(), JobError> {
    let statement = format!("INSERT INTO {} (message_id, n) VALUES ($1, $2)", args.table);
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(ctx.message_id())
        .bind(i64::from(args.n))
        .execute(tx)
        .await?;
    Ok(())
}

/// A body: records the run, writes the effect in the job's transaction,
/// holds it open for `hold_ms`, and fails if asked.
pub async fn write_effect(ctx: &JobContext, args: &DbWrite) -> Result<(), JobError> {
    record(ctx, args);
    let mut tx = ctx.tx().await?;
    insert_effect(ctx, &mut tx, args).await?;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
    if args.fail {
        return Err(JobError::permanent(format!(
            "failing after writing {}",
            args.n
        )));
    }
    Ok(())
}

crate::job_family! {
    /// Writes its effect in the job's transaction.
    fn(DbWrite) => write_effect;
    // The redelivery dedup test.
    inbox_dedup(queue = "eda-test.inbox-dedup", retries = 0);
    // The concurrent-redelivery race test.
    inbox_race(queue = "eda-test.inbox-race", retries = 0);
    inbox_rollback(queue = "eda-test.inbox-rollback", retries = 0);
    // One message id on two queues, as an event reaches each of its subscribers.
    inbox_per_queue_a(queue = "eda-test.inbox-per-queue-a", retries = 0);
    inbox_per_queue_b(queue = "eda-test.inbox-per-queue-b", retries = 0);
    // The worker loses its connection between the commit and the ack.
    inbox_ack_lost(queue = "eda-test.inbox-ack-lost", retries = 0);
    // The claim waits on a row lock held elsewhere; the 1 s timeout bounds
    // that wait to 6 s.
    inbox_locked(queue = "eda-test.inbox-locked", retries = 0, timeout = "1s");
    // A foreign producer's message id with quotes and backslashes, twice.
    inbox_foreign_id(queue = "eda-test.inbox-foreign-id", retries = 0);
}

/// Asks for a transaction the worker does not have.
#[job(queue = "eda-test.inbox-no-database", retries = 0)]
pub async fn needs_a_transaction(ctx: JobContext, _args: u32) -> Result<(), JobError> {
    ctx.tx().await?;
    Ok(())
}

/// Never runs: its worker never starts without a database.
#[job(queue = "eda-test.dedup-required", dedup = true)]
pub async fn dedup_required(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Writes its effect, then runs a statement that fails, ignores the error and
/// returns `Ok`: PostgreSQL would roll the transaction back at the commit.
#[job(queue = "eda-test.inbox-swallowed", retries = 0)]
pub async fn swallows_a_failed_statement(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    record(&ctx, &args);
    let mut tx = ctx.tx().await?;
    insert_effect(&ctx, &mut tx, &args).await?;
    let ignored = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(ignored.is_err(), "division by zero fails");
    Ok(())
}

/// Runs a failing statement in a savepoint of its transaction, rolls the
/// savepoint back, and writes its effect: the transaction (and its inbox
/// row) must survive the savepoint's rollback.
#[job(queue = "eda-test.inbox-savepoint", retries = 0)]
pub async fn uses_a_savepoint(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    record(&ctx, &args);
    let mut tx = ctx.tx().await?;
    let mut savepoint = tx.begin().await?;
    let failed = sqlx::query("SELECT 1 / 0").execute(&mut *savepoint).await;
    assert!(failed.is_err(), "division by zero fails");
    savepoint.rollback().await?;
    insert_effect(&ctx, &mut tx, &args).await?;
    Ok(())
}

/// Writes its effect, then begins a savepoint and never ends it, and
/// returns `Ok`: the worker must not commit a transaction it cannot tell
/// the state of.
#[job(queue = "eda-test.inbox-leaked-savepoint", retries = 0)]
pub async fn leaks_a_savepoint(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    record(&ctx, &args);
    let mut tx = ctx.tx().await?;
    insert_effect(&ctx, &mut tx, &args).await?;
    std::mem::forget(tx.begin().await?);
    Ok(())
}
