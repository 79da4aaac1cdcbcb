//! [`JobContext`]: what a handler knows about the message it runs for, and
//! the database transaction its effects commit in.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgConnection;
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

use crate::outbox::Outbox;
use crate::postgres::transaction::JobTransaction;
use crate::wire::{Envelope, MessageId, correlation_or_message_id};
use crate::{Error, Event, ExchangeKind, Job, QueueType};

/// A job or an event a handler sent without a database: published by the
/// worker after the handler succeeded, before the ack.
#[derive(Debug, Clone)]
pub(crate) struct FollowUp {
    pub(crate) target: Target,
    pub(crate) envelope: Envelope,
    pub(crate) body: Vec<u8>,
}

/// Where a follow-up goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// A job's queue, through the default exchange.
    Queue {
        queue: &'static str,
        queue_type: QueueType,
    },
    /// An event's exchange.
    Exchange {
        exchange: &'static str,
        kind: ExchangeKind,
        routing_key: &'static str,
    },
}

/// The follow-ups of one attempt.
pub(crate) type FollowUps = Arc<std::sync::Mutex<Vec<FollowUp>>>;

/// The handler's transaction, shared between the context (which the handler
/// owns) and the worker (which commits it after the handler returned).
pub(crate) type SharedTx = Arc<TxSlot>;

/// Where the handler's transaction lives while it runs.
#[derive(Debug)]
pub(crate) struct TxSlot {
    pub(crate) tx: Mutex<TxState>,
    /// Whether the handler ever borrowed it (only then can a statement of
    /// its own have failed in it).
    borrowed: AtomicBool,
    /// Whether the handler asked for it, begun or not (its queue uses the
    /// database, so it pauses while the database is away).
    wanted: AtomicBool,
}

/// The handler's transaction, through an attempt.
#[derive(Debug)]
pub(crate) enum TxState {
    /// Not begun: a job that does not dedup begins it at its first `ctx.tx()`.
    Lazy(LazyBegin),
    /// Open, for the handler to use.
    Open(JobTransaction),
    /// Taken by the worker to be committed or rolled back, or never begun
    /// when the attempt ended.
    Finished,
}

/// How a transaction not begun yet begins.
#[derive(Debug, Clone)]
pub(crate) struct LazyBegin {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) lock_timeout: std::time::Duration,
}

impl TxSlot {
    fn with(state: TxState) -> SharedTx {
        Arc::new(TxSlot {
            tx: Mutex::new(state),
            borrowed: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
        })
    }

    pub(crate) fn new(tx: JobTransaction) -> SharedTx {
        TxSlot::with(TxState::Open(tx))
    }

    /// A slot whose transaction begins at the handler's first `ctx.tx()`,
    /// so that a job that never asks for one holds no connection.
    pub(crate) fn lazy(begin: LazyBegin) -> SharedTx {
        TxSlot::with(TxState::Lazy(begin))
    }

    /// Whether the handler ever borrowed the transaction.
    pub(crate) fn was_borrowed(&self) -> bool {
        self.borrowed.load(Ordering::Acquire)
    }

    /// Whether the handler asked for the transaction (even if it could not begin).
    pub(crate) fn was_wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }
}

/// Handed to every handler: which message this is, which attempt, and the
/// correlation id that ties it to the request that caused it.
#[derive(Debug, Clone)]
pub struct JobContext {
    message_id: String,
    correlation_id: Option<String>,
    attempt: u32,
    /// The message's `timestamp` property (seconds), read when its id holds no time.
    timestamp: Option<u64>,
    job: &'static str,
    queue: &'static str,
    /// The routing key the message arrived with, when it is not the
    /// queue's name (a job enqueued to its queue needs no copy).
    routing_key: Option<String>,
    /// The message's `type`, when it is not the job's wire name (a raw
    /// subscriber's messages).
    message_type: Option<Option<String>>,
    tx: Option<SharedTx>,
    /// The outbox of the transaction's database (none without one: a job
    /// without a database makes no schema name).
    outbox: Option<Outbox>,
    follow_ups: FollowUps,
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
            timestamp: None,
            job,
            queue,
            routing_key: None,
            message_type: None,
            tx: None,
            outbox: None,
            follow_ups: FollowUps::default(),
        }
    }

    /// The same context, for a message whose `timestamp` property is `timestamp`.
    pub(crate) fn with_timestamp(mut self, timestamp: Option<u64>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The same context, for a message that arrived with `routing_key` and
    /// `message_type` (its `type` property).
    pub(crate) fn with_arrival(mut self, routing_key: &str, message_type: Option<&str>) -> Self {
        self.routing_key = (routing_key != self.queue).then(|| routing_key.to_owned());
        if message_type != Some(self.job) {
            self.message_type = Some(message_type.map(str::to_owned));
        }
        self
    }

    /// The same context, with the handler's transaction and its database's outbox.
    pub(crate) fn with_tx(mut self, tx: SharedTx, outbox: Outbox) -> Self {
        self.tx = Some(tx);
        self.outbox = Some(outbox);
        self
    }

    /// The correlation id of the jobs this one enqueues: its own, or its
    /// message id when it has none.
    fn correlation_id_for_children(&self) -> String {
        self.correlation_id().unwrap_or_default().to_owned()
    }

    /// The jobs enqueued with [`JobContext::enqueue`] without a database.
    pub(crate) fn follow_ups(&self) -> FollowUps {
        self.follow_ups.clone()
    }

    /// Enqueues `job` as a consequence of this one, carrying its correlation id.
    ///
    /// With a database, the job goes into the outbox in the handler's
    /// transaction: it is sent if and only if this job's effects commit, so
    /// consuming this message and producing the next ones are one atomic step.
    /// Without one, the worker publishes it (confirmed) after the handler
    /// succeeded and before the ack: at least once, and if that publish fails
    /// this attempt fails and is retried, handler included. Its message id
    /// is derived from this message's id and its place among the jobs this
    /// handler enqueued, so the copies a retry sends again carry the same ids
    /// and the receiving worker's inbox drops them.
    ///
    /// While the handler holds its transaction (`ctx.tx()`), this is an
    /// error: enqueue through [`JobTx::enqueue`] instead.
    ///
    /// In a unit test (`JobContext::for_test()`), the jobs are only collected:
    /// see [`JobContext::enqueued`].
    pub async fn enqueue<J: Job>(&self, job: J, args: J::Args) -> Result<MessageId, Error> {
        if self.tx.is_some() {
            return self.tx().await?.enqueue(job, args).await;
        }
        let body = serde_json::to_vec(&args).map_err(|source| Error::Serialize {
            payload: crate::wire::Payload::Job(J::NAME),
            source,
        })?;
        let target = Target::Queue {
            queue: J::QUEUE,
            queue_type: J::QUEUE_TYPE,
        };
        Ok(self.follow_up(J::NAME, target, body))
    }

    /// Keeps a follow-up for the worker to publish after the handler
    /// succeeded, carrying this job's correlation id; returns its message id.
    fn follow_up(&self, name: &'static str, target: Target, body: Vec<u8>) -> MessageId {
        let correlation_id = self.correlation_id_for_children();
        let mut follow_ups = self
            .follow_ups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let message_id = if self.message_id.is_empty() {
            // A message without an id (a foreign producer's): nothing stable to derive from.
            MessageId::new()
        } else {
            follow_up_id(self.queue, &self.message_id, name, follow_ups.len())
        };
        follow_ups.push(FollowUp {
            target,
            envelope: Envelope {
                message_id: message_id.to_string(),
                correlation_id: Some(correlation_id),
                job: Some(name.to_owned()),
                attempt: 0,
                eta: None,
            },
            body,
        });
        message_id
    }

    /// Publishes `event` as a consequence of this job, carrying its
    /// correlation id, with the handler's outcome as [`JobContext::enqueue`]
    /// does: through the outbox in the handler's transaction with a
    /// database, else published (confirmed) by the worker after the handler
    /// succeeded and before the ack, with an id derived from this message's
    /// so that a retry's copy is dropped by its subscribers' inboxes. An
    /// event no queue takes is not an error.
    pub async fn publish<E: Event>(&self, event: E) -> Result<MessageId, Error> {
        if self.tx.is_some() {
            return self.tx().await?.publish(event).await;
        }
        let body = serde_json::to_vec(&event).map_err(|source| Error::Serialize {
            payload: crate::wire::Payload::Event(E::NAME),
            source,
        })?;
        let target = Target::Exchange {
            exchange: E::EXCHANGE,
            kind: E::KIND,
            routing_key: E::ROUTING_KEY,
        };
        Ok(self.follow_up(E::NAME, target, body))
    }

    /// The jobs and events this context collected with [`JobContext::enqueue`]
    /// and [`JobContext::publish`] when it
    /// has no database (in a unit test): `(wire name, JSON)`.
    pub fn enqueued(&self) -> Vec<(String, serde_json::Value)> {
        self.follow_ups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|follow_up| {
                (
                    follow_up.envelope.job.clone().unwrap_or_default(),
                    serde_json::from_slice(&follow_up.body).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect()
    }

    /// A context for running a handler in a unit test, with no broker:
    /// a fresh message id, attempt 0.
    pub fn for_test() -> Self {
        let id = MessageId::new().to_string();
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

    /// When the message was enqueued: read from its id when that is a
    /// UUIDv7 (eda-worker's own ids), else from its `timestamp` property (to
    /// the second); `None` when it has neither (a foreign producer's).
    pub fn enqueued_at(&self) -> Option<SystemTime> {
        crate::wire::enqueued_at_ms(&self.message_id, self.timestamp)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The correlation id carried from the enqueuing request: the one the
    /// message names, else its message id (a foreign message with neither
    /// has none).
    pub fn correlation_id(&self) -> Option<&str> {
        correlation_or_message_id(self.correlation_id.as_deref(), &self.message_id)
    }

    /// The job's wire name.
    pub fn job_name(&self) -> &'static str {
        self.job
    }

    /// The queue the message came from.
    pub fn queue(&self) -> &'static str {
        self.queue
    }

    /// The routing key the message was published with: an event's key (on a
    /// topic exchange, the one a pattern matched), or the queue's name for a
    /// job enqueued to it.
    pub fn routing_key(&self) -> &str {
        self.routing_key.as_deref().unwrap_or(self.queue)
    }

    /// The message's `type` property: the job's or the event's wire name.
    /// A raw subscriber (`bind`) gets whatever arrived, which may be `None`.
    pub fn message_type(&self) -> Option<&str> {
        match &self.message_type {
            None => Some(self.job),
            Some(other) => other.as_deref(),
        }
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
    /// The transaction is one connection: one `JobTx` at a time. Use
    /// [`JobTx::enqueue`] to enqueue while holding it. Clones of the context
    /// used at the same time (`join!`, spawned tasks) get an error rather
    /// than wait their turn: take the transaction once and pass it along.
    ///
    /// An error when the worker has no database (set `DATABASE_URL`), when an
    /// earlier `JobTx` is still alive (waiting for it would deadlock a
    /// handler that holds it), or when called after the handler returned
    /// (from a task it spawned).
    pub async fn tx(&self) -> Result<JobTx<'_>, Error> {
        let Some(shared) = &self.tx else {
            return Err(Error::NoTransaction {
                job: self.job,
                reason: "the worker has no database: set DATABASE_URL (or WorkerConfig::database)",
            });
        };
        shared.wanted.store(true, Ordering::Release);
        let Ok(mut guard) = shared.tx.try_lock() else {
            return Err(Error::NoTransaction {
                job: self.job,
                reason: "the transaction is borrowed by an earlier `ctx.tx()` that is still alive: \
                         drop it first, or call `enqueue` on it",
            });
        };
        if let TxState::Lazy(begin) = &*guard {
            let statement = crate::postgres::transaction::begin_statement(begin.lock_timeout);
            let tx = JobTransaction::begin(&begin.pool, statement)
                .await
                .map_err(|source| Error::Database {
                    operation: "begin of the job's transaction".into(),
                    source,
                })?;
            *guard = TxState::Open(tx);
        }
        if !matches!(*guard, TxState::Open(_)) {
            return Err(Error::NoTransaction {
                job: self.job,
                reason: "the handler has returned and its transaction is finished",
            });
        }
        shared.borrowed.store(true, Ordering::Release);
        Ok(JobTx { guard, ctx: self })
    }
}

/// The message id of the `index`-th job `job` enqueued by the handler of
/// message `parent` on `queue` without a database: the same on every
/// attempt, so the copies a retry sends again are dropped by the receiving
/// worker's inbox; different on each queue a message reaches (an event's
/// subscribers each run, and each enqueue).
fn follow_up_id(queue: &str, parent: &str, job: &str, index: usize) -> MessageId {
    let name = format!("{queue}\n{parent}\n{job}\n{index}");
    MessageId::from(Uuid::new_v5(&FOLLOW_UP_NAMESPACE, name.as_bytes()))
}

/// The UUIDv5 namespace of follow-up message ids.
const FOLLOW_UP_NAMESPACE: Uuid = Uuid::from_u128(0x6564_612d_776f_726b_6572_2d66_6f6c_6c6f);

/// The handler's transaction, borrowed from its [`JobContext`]: use
/// `&mut *tx` as a sqlx executor. Hold it only while writing; the worker
/// commits after the handler returned.
pub struct JobTx<'a> {
    guard: MutexGuard<'a, TxState>,
    ctx: &'a JobContext,
}

impl JobTx<'_> {
    /// Enqueues `job` through the outbox in this transaction, carrying the
    /// job's correlation id: the same as [`JobContext::enqueue`], for a
    /// handler that holds its transaction.
    pub async fn enqueue<J: Job>(&mut self, job: J, args: J::Args) -> Result<MessageId, Error> {
        let ctx = self.ctx;
        let correlation_id = ctx.correlation_id_for_children();
        let outbox = ctx.outbox.clone().unwrap_or_default();
        outbox
            .enqueue_correlated(self, job, args, correlation_id)
            .await
    }

    /// Publishes `event` through the outbox in this transaction, carrying the
    /// job's correlation id: the same as [`JobContext::publish`], for a
    /// handler that holds its transaction.
    pub async fn publish<E: Event>(&mut self, event: E) -> Result<MessageId, Error> {
        let ctx = self.ctx;
        let correlation_id = ctx.correlation_id_for_children();
        let outbox = ctx.outbox.clone().unwrap_or_default();
        outbox
            .publish_correlated(self, event, Some(correlation_id))
            .await
    }
}

impl Deref for JobTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &*self.guard {
            TxState::Open(tx) => tx,
            _ => unreachable!("JobTx is only handed out while the transaction is open"),
        }
    }
}

impl DerefMut for JobTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut *self.guard {
            TxState::Open(tx) => tx,
            _ => unreachable!("JobTx is only handed out while the transaction is open"),
        }
    }
}

impl std::fmt::Debug for JobTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTx").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::follow_up_id;

    #[test]
    fn follow_up_ids_are_the_same_on_every_attempt_and_differ_by_place_parent_and_queue() {
        let parent = "0f8e6d3c-1b2a-4c5d-9e8f-7a6b5c4d3e2f";
        let id = |queue, parent, job, index| follow_up_id(queue, parent, job, index);
        assert_eq!(
            id("q", parent, "send_email", 0),
            id("q", parent, "send_email", 0)
        );
        assert_ne!(
            id("q", parent, "send_email", 0),
            id("q", parent, "send_email", 1)
        );
        assert_ne!(
            id("q", parent, "send_email", 0),
            id("q", parent, "charge", 0)
        );
        assert_ne!(
            id("q", parent, "send_email", 0),
            id("q", "another", "send_email", 0)
        );
        assert_ne!(
            id("q", parent, "send_email", 0),
            id("r", parent, "send_email", 0)
        );
    }

    #[tokio::test]
    async fn a_message_without_an_id_gets_fresh_follow_up_ids() {
        use crate::JobContext;
        let ctx = JobContext::new(String::new(), None, 0, "parent", "q");
        let first = ctx.enqueue(Child, 1).await.unwrap();
        let ctx = JobContext::new(String::new(), None, 0, "parent", "q");
        let second = ctx.enqueue(Child, 1).await.unwrap();
        assert_ne!(first, second);
    }

    /// A job for the tests above.
    #[derive(Clone, Copy, Default)]
    struct Child;

    impl crate::Job for Child {
        type Args = u32;
        type Output = ();
        const NAME: &'static str = "child";
        const QUEUE: &'static str = "child";

        async fn call(&self, _ctx: crate::JobContext, _args: u32) -> Result<(), crate::JobError> {
            Ok(())
        }
    }
}
