//! Running one delivery: find the job by its `type`, decode the arguments,
//! run the handler under its timeout with panics caught, and dead-letter what
//! did not succeed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use lapin::message::Delivery;
use sqlx::{Postgres, Transaction};
use tracing::Instrument;

use super::ack::Settlement;
use super::decision::{DeadLetterWhy, Decision, Failure, RetryPolicy, decide, panic_message};
use crate::broker::Publisher;
use crate::broker::{self, QueueSpec};
use crate::context::{FollowUps, SharedTx, TxSlot};
use crate::dead_letter::publish_dead_letter;
use crate::job::JobDefinition;
use crate::outbox::Outbox;
use crate::postgres::Database;
use crate::postgres::inbox::{self, Begun};
use crate::wire::{Envelope, now_millis, republished_properties, retry_properties};
use crate::{DelayQueues, JobContext, QueueType};

/// Added to a job's timeout for the time its inbox claim may wait on another
/// copy of its message (see [`inbox::begin`]).
const LOCK_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// How long the commit waits for a task the handler spawned to drop its
/// `ctx.tx()` guard.
const TX_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long a failed attempt waits for its transaction's rollback.
const ROLLBACK_WAIT: Duration = Duration::from_secs(2);

/// SQLSTATE 25P02: a statement failed earlier in the transaction.
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// The jobs consumed from one queue, by wire name.
#[derive(Debug)]
pub(crate) struct QueueJobs {
    pub(crate) queue: &'static str,
    pub(crate) queue_type: QueueType,
    jobs: HashMap<&'static str, JobDefinition>,
}

impl QueueJobs {
    pub(crate) fn new(
        queue: &'static str,
        definitions: impl IntoIterator<Item = JobDefinition>,
    ) -> Self {
        let jobs: HashMap<_, _> = definitions
            .into_iter()
            .filter(|job| job.queue == queue)
            .map(|job| (job.name, job))
            .collect();
        // The registry has checked that the jobs of one queue agree on its type.
        let queue_type = jobs
            .values()
            .next()
            .map(|job| job.queue_type)
            .unwrap_or_default();
        QueueJobs {
            queue,
            queue_type,
            jobs,
        }
    }

    /// The jobs consumed from this queue.
    pub(crate) fn definitions(&self) -> impl Iterator<Item = &JobDefinition> {
        self.jobs.values()
    }

    fn resolve(&self, envelope: &Envelope) -> Result<&JobDefinition, Failure> {
        let name = envelope.job.as_deref().ok_or(Failure::MissingType)?;
        self.jobs.get(name).ok_or_else(|| Failure::UnknownJob {
            job: name.to_owned(),
            queue: self.queue,
        })
    }
}

/// What every delivery of one queue needs, shared by its handler tasks.
pub(crate) struct Dispatch {
    pub(crate) jobs: Arc<QueueJobs>,
    /// Confirmed publishes of retries, hops and dead letters.
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) delays: Arc<DelayQueues>,
    pub(crate) max_message_size: usize,
    /// Where handlers' transactions and the inbox live, when configured.
    pub(crate) database: Option<Database>,
    /// Queues declared for follow-up jobs (`ctx.enqueue` without a database).
    pub(crate) declared: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

/// Handles one delivery to the end and says how to settle it. Never panics
/// because a handler did: the panic is this attempt's failure.
pub(crate) async fn handle_delivery(delivery: Delivery, dispatch: &Dispatch) -> Settlement {
    let envelope = Envelope::from_properties(&delivery.properties);
    let span = tracing::info_span!(
        "job",
        job = envelope.job.as_deref().unwrap_or("?"),
        queue = dispatch.jobs.queue,
        message_id = %envelope.message_id,
        correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
        attempt = envelope.attempt,
    );
    async {
        let size = delivery.data.len();
        if size > dispatch.max_message_size {
            let failure = Failure::TooLarge {
                size,
                limit: dispatch.max_message_size,
            };
            return settle_failure(&delivery, &envelope, failure, None, dispatch).await;
        }
        if let Some(eta) = envelope.eta.filter(|eta| *eta > now_millis()) {
            return hop(&delivery, &envelope, eta, dispatch).await;
        }
        let job = match dispatch.jobs.resolve(&envelope) {
            Ok(job) => job,
            Err(failure) => {
                return settle_failure(&delivery, &envelope, failure, None, dispatch).await;
            }
        };
        let policy = Some(RetryPolicy {
            retries: job.retries,
            backoff: job.backoff,
        });
        let tx = match begin_transaction(&envelope, job, dispatch).await {
            Ok(Some(Begun::Open(tx))) => Some(TxSlot::new(tx)),
            Ok(Some(Begun::AlreadyProcessed)) => {
                tracing::info!("already processed (its inbox row exists); acked without running");
                return Settlement::Ack;
            }
            Ok(None) => None,
            Err(failure) => {
                return settle_failure(&delivery, &envelope, failure, policy, dispatch).await;
            }
        };
        let mut ctx = JobContext::new(
            envelope.message_id.clone(),
            envelope.correlation_id.clone(),
            envelope.attempt,
            job.name,
            job.queue,
        );
        if let (Some(tx), Some(database)) = (&tx, &dispatch.database) {
            ctx = ctx.with_tx(tx.clone(), Outbox::in_schema(database.schema().clone()));
        }
        let follow_ups = ctx.follow_ups();
        let ran = run_attempt(&delivery, ctx, job).await;
        let outcome = match (ran, tx) {
            (Ok(()), Some(tx)) => commit(&tx).await,
            (Ok(()), None) => publish_follow_ups(&follow_ups, dispatch).await,
            (ran, Some(tx)) => {
                roll_back(&tx).await;
                ran
            }
            (ran, None) => ran,
        };
        match outcome {
            Ok(()) => {
                tracing::debug!("job succeeded");
                Settlement::Ack
            }
            Err(failure) => settle_failure(&delivery, &envelope, failure, policy, dispatch).await,
        }
    }
    .instrument(span)
    .await
}

/// Begins the handler's transaction when a database is configured, claiming
/// the message in the inbox unless the job opted out of dedup.
async fn begin_transaction(
    envelope: &Envelope,
    job: &JobDefinition,
    dispatch: &Dispatch,
) -> Result<Option<Begun>, Failure> {
    let Some(database) = &dispatch.database else {
        return Ok(None);
    };
    // A message without an id (from a foreign producer) cannot be deduplicated.
    let dedup = job.dedup != Some(false) && !envelope.message_id.is_empty();
    // A copy of this message still running past its own timeout is stuck.
    let lock_timeout = job.timeout.saturating_add(LOCK_TIMEOUT_MARGIN);
    inbox::begin(
        database,
        &envelope.message_id,
        job.name,
        job.queue,
        dedup,
        lock_timeout,
    )
    .await
    .map(Some)
    .map_err(|error| Failure::Database {
        operation: "begin of the job's transaction",
        error,
    })
}

/// Commits the handler's transaction (its writes and the inbox row).
///
/// PostgreSQL answers `COMMIT` of a transaction in which a statement failed
/// with a rollback, not an error: a handler that ignored a failed statement
/// and returned `Ok` would lose its effects and have its message acked. A
/// statement before the commit fails in such a transaction, so that case is
/// a failed attempt (checked when the handler borrowed the transaction).
async fn commit(shared: &SharedTx) -> Result<(), Failure> {
    // Taken out: a task the handler spawned can no longer use it.
    let Some(mut tx) = take(shared, TX_RELEASE_WAIT).await? else {
        return Err(Failure::Uncommitted(
            "its transaction was finished before the worker could commit it",
        ));
    };
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
async fn roll_back(shared: &SharedTx) {
    match take(shared, Duration::ZERO).await {
        // Bounded: after a timeout the connection may still be running the
        // handler's abandoned statement, which the rollback waits for. Past
        // the bound the transaction is dropped, and sqlx rolls it back when
        // the connection is next used.
        Ok(Some(tx)) => match tokio::time::timeout(ROLLBACK_WAIT, tx.rollback()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "rollback of the job's transaction failed; its connection is closed");
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
/// the handler spawned to let go of it.
async fn take(
    shared: &SharedTx,
    wait: Duration,
) -> Result<Option<Transaction<'static, Postgres>>, Failure> {
    match tokio::time::timeout(wait, shared.tx.lock()).await {
        Ok(mut guard) => Ok(guard.take()),
        Err(_) => Err(Failure::Uncommitted(
            "a task the handler spawned still held its transaction (a `ctx.tx()` guard) after the handler returned",
        )),
    }
}

/// Publishes, confirmed, the jobs a handler enqueued without a database,
/// after it succeeded and before its message is acked.
async fn publish_follow_ups(follow_ups: &FollowUps, dispatch: &Dispatch) -> Result<(), Failure> {
    let follow_ups = std::mem::take(
        &mut *follow_ups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for follow_up in follow_ups {
        let published = async {
            let declared = dispatch
                .declared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(follow_up.queue);
            if !declared {
                let spec = QueueSpec::job(follow_up.queue, follow_up.queue_type);
                broker::declare_queue(dispatch.publisher.connection(), &spec).await?;
                dispatch
                    .declared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(follow_up.queue);
            }
            let message_id = follow_up.envelope.message_id.clone();
            let properties = follow_up.envelope.into_properties()?;
            dispatch
                .publisher
                .publish(
                    "",
                    follow_up.queue,
                    &message_id,
                    &follow_up.body,
                    properties,
                )
                .await
        }
        .await;
        published.map_err(Failure::FollowUp)?;
    }
    Ok(())
}

async fn run_attempt(
    delivery: &Delivery,
    ctx: JobContext,
    job: &JobDefinition,
) -> Result<(), Failure> {
    // The user's Deserialize runs here: a panic in it fails the attempt too.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| job.start(ctx, &delivery.data)))
        .map_err(|payload| Failure::Panicked(panic_message(payload.as_ref())))?;
    let handler = started.map_err(|error| Failure::BadArguments {
        job: job.name,
        error,
    })?;
    match tokio::time::timeout(job.timeout, AssertUnwindSafe(handler).catch_unwind()).await {
        Err(_elapsed) => Err(Failure::TimedOut(job.timeout)),
        Ok(Err(payload)) => Err(Failure::Panicked(panic_message(payload.as_ref()))),
        Ok(Ok(Err(error))) => Err(Failure::Failed(error)),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// A message that is not due yet goes on to its next delay queue, unrun.
async fn hop(
    delivery: &Delivery,
    envelope: &Envelope,
    eta: u64,
    dispatch: &Dispatch,
) -> Settlement {
    let properties = republished_properties(&delivery.properties, std::iter::empty());
    let published = dispatch
        .delays
        .publish(
            &dispatch.publisher,
            dispatch.jobs.queue,
            &envelope.message_id,
            &delivery.data,
            properties,
            eta,
        )
        .await;
    match published {
        Ok(bucket) => {
            tracing::debug!(
                due_in_ms = eta.saturating_sub(now_millis()),
                delay_queue = %dispatch.delays.name(dispatch.jobs.queue, bucket),
                "not due yet; sent on to a delay queue"
            );
            Settlement::Ack
        }
        Err(error) => {
            tracing::error!(
                error = %crate::error::error_chain_text(&error),
                "could not send a message that is not due yet to a delay queue; returning it to the queue"
            );
            Settlement::Requeue
        }
    }
}

async fn settle_failure(
    delivery: &Delivery,
    envelope: &Envelope,
    failure: Failure,
    policy: Option<RetryPolicy>,
    dispatch: &Dispatch,
) -> Settlement {
    let reason = failure.reason();
    let queue = dispatch.jobs.queue;
    match decide(&failure, envelope.attempt, policy, fastrand::f64()) {
        Decision::Retry { attempt, delay } => {
            let eta =
                now_millis().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            let properties = retry_properties(&delivery.properties, attempt, eta, &reason);
            let published = dispatch
                .delays
                .publish(
                    &dispatch.publisher,
                    queue,
                    &envelope.message_id,
                    &delivery.data,
                    properties,
                    eta,
                )
                .await;
            match published {
                Ok(_) => {
                    tracing::warn!(error = %reason, next_attempt = attempt, retry_in = ?delay, "job failed; retrying");
                    Settlement::Ack
                }
                Err(error) => {
                    tracing::error!(
                        error = %reason,
                        retry_error = %crate::error::error_chain_text(&error),
                        "job failed and its retry could not be scheduled; returning it to the queue"
                    );
                    Settlement::Requeue
                }
            }
        }
        Decision::DeadLetter { why } => {
            let published = publish_dead_letter(
                &dispatch.publisher,
                queue,
                &delivery.data,
                &delivery.properties,
                &reason,
                envelope.attempt,
            )
            .await;
            match published {
                Ok(()) => {
                    match why {
                        DeadLetterWhy::RetriesSpent => tracing::warn!(
                            error = %reason,
                            "job failed and its retries are spent; moved to the dead-letter queue"
                        ),
                        DeadLetterWhy::NotRetryable => tracing::warn!(
                            error = %reason,
                            "job failed and cannot be retried; moved to the dead-letter queue"
                        ),
                    }
                    Settlement::Ack
                }
                Err(error) => {
                    // Not acked, so not lost: the broker gets it back and it is tried again.
                    tracing::error!(
                        error = %reason,
                        dead_letter_error = %crate::error::error_chain_text(&error),
                        "job failed and could not be dead-lettered; returning it to the queue"
                    );
                    Settlement::Requeue
                }
            }
        }
    }
}
