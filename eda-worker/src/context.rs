//! [`JobContext`]: what a handler knows about the message it runs for, and
//! the database transaction its effects commit in.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::Error;

/// The handler's transaction, shared between the context (which the handler
/// owns) and the worker (which commits it after the handler returned).
pub(crate) type SharedTx = Arc<Mutex<Option<Transaction<'static, Postgres>>>>;

/// Handed to every handler: which message this is, which attempt, and the
/// correlation id that ties it to the request that caused it.
#[derive(Debug, Clone)]
pub struct JobContext {
    message_id: String,
    correlation_id: Option<String>,
    attempt: u32,
    job: &'static str,
    queue: &'static str,
    tx: Option<SharedTx>,
}

impl JobContext {
    pub(crate) fn new(
        message_id: String,
        correlation_id: Option<String>,
        attempt: u32,
        job: &'static str,
        queue: &'static str,
    ) -> Self {
        JobContext {
            message_id,
            correlation_id,
            attempt,
            job,
            queue,
            tx: None,
        }
    }

    /// The same context, with the handler's transaction.
    pub(crate) fn with_tx(mut self, tx: SharedTx) -> Self {
        self.tx = Some(tx);
        self
    }

    /// A context for running a handler in a unit test, with no broker:
    /// a fresh message id, attempt 0.
    pub fn for_test() -> Self {
        let id = Uuid::new_v4().to_string();
        JobContext::new(id.clone(), Some(id), 0, "test", "test")
    }

    /// The same context on attempt `attempt` (for tests of retry behaviour).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// 0 on the first run, `n` on the n-th retry (the `x-eda-attempt` header).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The message id, stable across retries: the key for idempotency.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The correlation id carried from the enqueuing request, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The job's wire name.
    pub fn job_name(&self) -> &'static str {
        self.job
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &'static str {
        self.queue
    }

    /// The handler's PostgreSQL transaction: write the job's effects here.
    /// The worker commits it (with the message's inbox row) after the handler
    /// returned `Ok`, and only then acks; on an error, a panic or a timeout
    /// it rolls back.
    ///
    /// ```no_run
    /// # use eda_worker::prelude::*;
    /// #[job(queue = "billing")]
    /// async fn charge(ctx: JobContext, order_id: i64) -> Result<(), JobError> {
    ///     let mut tx = ctx.tx().await?;
    ///     sqlx::query("UPDATE orders SET charged = true WHERE id = $1")
    ///         .bind(order_id)
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// An error when the worker has no database (set `DATABASE_URL`), or when
    /// called after the handler returned (from a task it spawned).
    pub async fn tx(&self) -> Result<JobTx<'_>, Error> {
        let Some(shared) = &self.tx else {
            return Err(Error::NoTransaction {
                job: self.job,
                reason: "the worker has no database: set DATABASE_URL (or WorkerConfig::database)",
            });
        };
        let guard = shared.lock().await;
        if guard.is_none() {
            return Err(Error::NoTransaction {
                job: self.job,
                reason: "the handler has returned and its transaction is finished",
            });
        }
        Ok(JobTx { guard })
    }
}

/// The handler's transaction, borrowed from its [`JobContext`]: use
/// `&mut *tx` as a sqlx executor. Hold it only while writing; the worker
/// commits after the handler returned.
pub struct JobTx<'a> {
    guard: MutexGuard<'a, Option<Transaction<'static, Postgres>>>,
}

impl Deref for JobTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.guard
            .as_deref()
            .expect("JobTx is only handed out while the transaction is open")
    }
}

impl DerefMut for JobTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.guard
            .as_deref_mut()
            .expect("JobTx is only handed out while the transaction is open")
    }
}

impl std::fmt::Debug for JobTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTx").finish_non_exhaustive()
    }
}
