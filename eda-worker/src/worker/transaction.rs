//! The handler's PostgreSQL transaction: begun with the inbox claim before
//! the handler runs (or at its first `ctx.tx()` for a job that does not
//! dedup), then committed, rolled back, or left alone, as [`ending`]
//! decides from how the attempt went.

use std::time::Duration;

use super::decision::Failure;
use super::dispatch::Dispatch;
use crate::job::{JobDefinition, LazyBegin, SharedTx, TxSlot, TxState};
use crate::postgres::inbox::{self, Begun};
use crate::postgres::transaction::{JobTransaction, ROLLBACK_WAIT};
use crate::wire::Envelope;

/// Added to a job's timeout for the time its inbox claim may wait on another
/// copy of its message (see [`inbox::begin`]).
const LOCK_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// How long the commit waits for a task the handler spawned to drop its
/// `ctx.tx()` guard.
const TX_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// SQLSTATE 25P02: a statement failed earlier in the transaction.
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// How an attempt ends, given how its handler ran and whether it had a
/// transaction `T`: the commit / rollback / follow-up matrix.
#[derive(Debug)]
pub(super) enum Ending<T> {
    /// The handler succeeded in a transaction: commit it (its writes, its
    /// inbox row and its outbox rows), then ack.
    Commit(T),
    /// The handler succeeded without a database: publish the jobs it
    /// enqueued, then ack.
    PublishFollowUps,
    /// The handler failed in a transaction: roll it back, then settle the failure.
    RollBack(T, Failure),
    /// The handler failed without a transaction: settle the failure.
    Fail(Failure),
}

/// The ending of an attempt that ran as `ran`, in transaction `tx` or none.
pub(super) fn ending<T>(ran: Result<(), Failure>, tx: Option<T>) -> Ending<T> {
    match (ran, tx) {
        (Ok(()), Some(tx)) => Ending::Commit(tx),
        (Ok(()), None) => Ending::PublishFollowUps,
        (Err(failure), Some(tx)) => Ending::RollBack(tx, failure),
        (Err(failure), None) => Ending::Fail(failure),
    }
}

/// What the handler gets before it runs.
pub(super) enum Start {
    /// Its transaction: begun with the message's inbox claim when the job
    /// dedups, or begun at its first `ctx.tx()` when it does not.
    Tx(SharedTx),
    /// The message's effects committed before: ack it without running.
    AlreadyProcessed,
}

/// The handler's transaction when a database is configured: begun now with
/// the inbox claim when the job dedups, else begun lazily, so that a job
/// that never calls `ctx.tx()` holds no connection.
pub(super) async fn begin(
    envelope: &Envelope,
    job: &JobDefinition,
    dispatch: &Dispatch,
) -> Result<Option<Start>, Failure> {
    let Some(database) = &dispatch.database else {
        return Ok(None);
    };
    // A copy of this message still running past its own timeout is stuck.
    let lock_timeout = job.timeout.saturating_add(LOCK_TIMEOUT_MARGIN);
    // A message without an id (from a foreign producer) cannot be deduplicated.
    let dedup = job.dedup != Some(false) && !envelope.message_id.is_empty();
    if !dedup {
        return Ok(Some(Start::Tx(TxSlot::lazy(LazyBegin {
            pool: database.pool().clone(),
            lock_timeout,
        }))));
    }
    match inbox::begin(
        database,
        &envelope.message_id,
        job.name,
        job.queue,
        lock_timeout,
    )
    .await
    {
        Ok(Begun::Open(tx)) => Ok(Some(Start::Tx(TxSlot::new(tx)))),
        Ok(Begun::AlreadyProcessed) => Ok(Some(Start::AlreadyProcessed)),
        Err(error) => Err(Failure::Database {
            operation: "begin of the job's transaction",
            error,
        }),
    }
}

/// Commits the handler's transaction (its writes and the inbox row).
///
/// PostgreSQL answers `COMMIT` of a transaction in which a statement failed
/// with a rollback, not an error: a handler that ignored a failed statement
/// and returned `Ok` would lose its effects and have its message acked. A
/// statement before the commit fails in such a transaction, so that case is
/// a failed attempt (checked when the handler borrowed the transaction).
pub(super) async fn commit(shared: &SharedTx) -> Result<(), Failure> {
    // Taken out: a task the handler spawned can no longer use it.
    let (tx, never_begun) = take(shared, TX_RELEASE_WAIT).await?;
    let Some(mut tx) = tx else {
        if never_begun {
            // A job that does not dedup and never asked for its transaction.
            return Ok(());
        }
        return Err(Failure::Uncommitted(
            "its transaction was finished before the worker could commit it",
        ));
    };
    if !tx.is_intact() {
        tx.discard();
        return Err(Failure::Uncommitted(
            "the handler left a savepoint (`tx.begin()`) open, or one failed to begin and sqlx \
             rolled back the whole transaction; nothing was committed",
        ));
    }
    // Only a handler that borrowed the transaction can have failed in it.
    if shared.was_borrowed()
        && let Err(error) = sqlx::query("SELECT 1").execute(&mut *tx).await
    {
        let aborted = error
            .as_database_error()
            .and_then(|error| error.code())
            .is_some_and(|code| code == IN_FAILED_SQL_TRANSACTION);
        return Err(if aborted {
            Failure::Uncommitted(
                "a statement in its transaction failed (the handler went on and returned Ok), \
                 so PostgreSQL would roll it back; nothing was committed. Use a savepoint \
                 (tx.begin()) around a statement whose failure the handler tolerates",
            )
        } else {
            Failure::Database {
                operation: "check of the job's transaction before its commit",
                error,
            }
        });
    }
    tx.commit().await.map_err(|error| Failure::Database {
        operation: "commit of the job's transaction",
        error,
    })
}

/// Rolls back the handler's transaction after a failed attempt, so that its
/// connection and its inbox row lock are released before the retry. When a
/// task the handler spawned still holds it, that task's end rolls it back.
pub(super) async fn roll_back(shared: &SharedTx) {
    match take(shared, Duration::ZERO).await.map(|(tx, _)| tx) {
        // Bounded: after a timeout the connection may still be running the
        // handler's abandoned statement, which the rollback waits for. Past
        // the bound the transaction is dropped, and sqlx rolls it back when
        // the connection is next used.
        Ok(Some(tx)) => match tokio::time::timeout(ROLLBACK_WAIT, tx.rollback()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "rollback of the job's transaction failed; it is rolled back when its connection returns to the pool, or the connection is closed");
            }
            Err(_) => tracing::warn!(
                wait = ?ROLLBACK_WAIT,
                "rollback of the job's transaction still waits on the connection; left to finish in the background"
            ),
        },
        Ok(None) => {}
        Err(_) => tracing::warn!(
            "a task the handler spawned still holds the job's transaction: it rolls back when that task lets go"
        ),
    }
}

/// Takes the transaction out of the context, waiting up to `wait` for a task
/// the handler spawned to let go of it; with whether it never began (a lazy
/// one the handler did not ask for). Either way it cannot begin afterwards.
async fn take(
    shared: &SharedTx,
    wait: Duration,
) -> Result<(Option<JobTransaction>, bool), Failure> {
    match tokio::time::timeout(wait, shared.tx.lock()).await {
        Ok(mut guard) => Ok(match std::mem::replace(&mut *guard, TxState::Finished) {
            TxState::Open(tx) => (Some(tx), false),
            TxState::Lazy(_) => (None, true),
            TxState::Finished => (None, false),
        }),
        Err(_) => Err(Failure::Uncommitted(
            "a task the handler spawned still held its transaction (a `ctx.tx()` guard) after the handler returned",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_commits_or_publishes_and_failure_rolls_back_or_fails() {
        assert!(matches!(ending(Ok(()), Some("tx")), Ending::Commit("tx")));
        assert!(matches!(
            ending::<&str>(Ok(()), None),
            Ending::PublishFollowUps
        ));
        assert!(matches!(
            ending(Err(Failure::Panicked("boom".into())), Some("tx")),
            Ending::RollBack("tx", Failure::Panicked(_))
        ));
        assert!(matches!(
            ending::<&str>(Err(Failure::TimedOut(Duration::from_secs(1))), None),
            Ending::Fail(Failure::TimedOut(_))
        ));
    }
}
