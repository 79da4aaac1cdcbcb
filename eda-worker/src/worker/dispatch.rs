//! Running one delivery: admit it (size, due time, job), run the handler
//! under its timeout with panics caught, end its transaction, and settle
//! what did not succeed: a retry through the delay queues or a dead letter,
//! each confirmed before the original is acked.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use lapin::BasicProperties;
use tokio::time::Instant;
use tracing::Instrument;

use super::ack::Settlement;
use super::decision::{
    Admission, DeadLetterWhy, Decision, Failure, Limits, RetryPolicy, admit, decide, panic_message,
};
use super::follow_ups::{has_follow_ups, publish_follow_ups};
use super::hold::until_published;
use super::reply::{Answer, is_request, reply};
use super::starts;
use super::transaction::{self, Ending, Start, ending};
use crate::broker::Publisher;
use crate::dead_letter::publish_dead_letter;
use crate::error::error_chain_text;
use crate::job::{Binding, JobDefinition, Subscription};
use crate::outbox::Outbox;
use crate::postgres::Database;
use crate::postgres::health::{DatabaseHealth, is_outage, outage_in_chain};
use crate::retry::schedule::{Retry, publish_hop, publish_retry};
use crate::wire::{Envelope, HEADER_DEADLINE, header_u64, now_millis, unparsable_eta};
use crate::{DelayQueues, JobContext, QueueType};

/// The jobs consumed from one queue, by wire name.
#[derive(Debug)]
pub(crate) struct QueueJobs {
    pub(crate) queue: &'static str,
    pub(crate) queue_type: QueueType,
    jobs: HashMap<&'static str, JobDefinition>,
    /// The queue's raw subscriber (`bind`), its only job: it runs whatever
    /// arrives.
    raw: Option<JobDefinition>,
    /// Whether a job of this queue asked for its transaction (a queue whose
    /// jobs dedup uses the database anyway): such a queue stops taking
    /// deliveries while the database is away.
    uses_database: AtomicBool,
    /// Held while a redelivered message runs: they run one at a time.
    redelivered: tokio::sync::Mutex<()>,
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
        let raw = jobs
            .values()
            .find(|job| matches!(job.subscription, Subscription::Raw(_)))
            .copied();
        QueueJobs {
            queue,
            queue_type,
            jobs,
            raw,
            uses_database: AtomicBool::new(false),
            redelivered: tokio::sync::Mutex::new(()),
        }
    }

    /// The jobs consumed from this queue.
    pub(crate) fn definitions(&self) -> impl Iterator<Item = &JobDefinition> {
        self.jobs.values()
    }

    /// The job that runs a message with wire name `name` (`None`: the
    /// message has no `type`): the queue's raw subscriber if it has one,
    /// else the queue's job of that name.
    pub(crate) fn get(&self, name: Option<&str>) -> Option<&JobDefinition> {
        self.raw
            .as_ref()
            .or_else(|| name.and_then(|name| self.jobs.get(name)))
    }

    /// The bindings of this queue, each once.
    pub(crate) fn bindings(&self) -> Vec<Binding> {
        let mut bindings: Vec<Binding> = self
            .jobs
            .values()
            .flat_map(|job| job.subscription.bindings().iter().copied())
            .collect();
        bindings.sort_unstable_by_key(|binding| (binding.exchange, binding.routing_key));
        bindings.dedup();
        bindings
    }
}

/// What every delivery of one queue needs, shared by its handler tasks.
pub(crate) struct Dispatch {
    pub(crate) jobs: Arc<QueueJobs>,
    /// Confirmed publishes of retries, hops and dead letters.
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) delays: Arc<DelayQueues>,
    /// What the worker accepts before running a job.
    pub(crate) limits: Limits,
    /// Where handlers' transactions and the inbox live, when configured.
    pub(crate) database: Option<Database>,
    /// Queues declared for follow-up jobs (`ctx.enqueue` without a database).
    pub(crate) declared: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Exchanges declared for follow-up events (`ctx.publish` without a database).
    pub(crate) declared_exchanges:
        std::sync::Mutex<std::collections::HashSet<(&'static str, crate::ExchangeKind)>>,
    /// How long a delivery may be held while its retry, hop or dead letter
    /// cannot be published (see [`super::hold`]).
    pub(crate) hold_limit: std::time::Duration,
    /// Whether the broker blocks publishers (named when a hold starts).
    pub(crate) broker: Arc<crate::broker::BrokerState>,
    /// The broker session: held deliveries are handed back when it ends.
    pub(crate) session: tokio_util::sync::CancellationToken,
    /// Whether the database answers, when one is configured.
    pub(crate) health: Option<Arc<DatabaseHealth>>,
    /// Starts without a finish after which a redelivered message is
    /// dead-lettered instead of run (0: no limit).
    pub(crate) max_starts: u32,
}

impl Dispatch {
    /// Where redelivered messages' starts are counted: the database, when
    /// one is configured and the limit is on.
    fn start_ledger(&self) -> Option<&Database> {
        self.database.as_ref().filter(|_| self.max_starts > 0)
    }

    /// Whether this queue's jobs need the database to run.
    pub(crate) fn needs_database(&self) -> bool {
        self.database.is_some()
            && (self.jobs.definitions().any(|job| job.dedup != Some(false))
                || self.jobs.uses_database.load(Ordering::Relaxed))
    }
}

/// A delivery as its handler takes it: lapin's `Delivery` without its acker
/// (the consumer settles it by tag), exchange and routing key.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) redelivered: bool,
    /// The routing key it was published with.
    pub(crate) routing_key: lapin::types::ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) data: Vec<u8>,
}

/// Handles one delivery to the end and says how to settle it. Never panics
/// because a handler did: the panic is this attempt's failure.
pub(crate) async fn handle_delivery(delivery: Received, dispatch: &Dispatch) -> Settlement {
    let envelope = Envelope::from_properties(&delivery.properties);
    // Every log line of the attempt, the handler's own included, carries
    // these fields. The log formats them as the span is made, once per job:
    // that is the largest part of what a job costs the worker beyond lapin,
    // so they are few (the job names its queue) and written with Display
    // (Debug escapes text a character at a time), and the correlation id
    // only when it is not the message id.
    let span = tracing::info_span!(
        "job",
        job = %envelope.job.as_deref().unwrap_or("?"),
        message_id = %envelope.message_id,
        attempt = envelope.attempt,
        correlation_id = tracing::field::Empty,
    );
    // None on the wire: the message id.
    if let Some(correlation_id) = &envelope.correlation_id
        && *correlation_id != envelope.message_id
    {
        span.record("correlation_id", tracing::field::display(correlation_id));
    }
    let received = tokio::time::Instant::now();
    async {
        if let Some(deadline) = header_u64(&delivery.properties, HEADER_DEADLINE)
            && deadline <= now_millis()
        {
            tracing::info!(
                deadline_ms = deadline,
                "the caller of this request gave up (its deadline passed); acked without running"
            );
            return Settlement::Ack;
        }
        if envelope.eta.is_none()
            && let Some(eta) = unparsable_eta(&delivery.properties)
        {
            tracing::warn!(eta = %eta, "x-eda-eta is not a time in ms since the epoch; running the job now");
        }
        let admission = admit(
            delivery.data.len(),
            dispatch.limits,
            &envelope,
            now_millis(),
            dispatch.jobs.queue,
            |name| dispatch.jobs.get(name),
        );
        let job = match admission {
            Admission::Run(job) => job,
            Admission::NotDue { eta } => {
                return Box::pin(hop(&delivery, &envelope, eta, dispatch, received)).await;
            }
            Admission::Refuse(failure) => {
                return Box::pin(settle_failure(&delivery, &envelope, failure, None, dispatch, received)).await;
            }
        };
        let policy = Some(RetryPolicy {
            retries: job.retries,
            backoff: job.backoff,
        });
        // A redelivered message may be the one that killed the last worker:
        // its starts are counted, and such messages run one at a time, so
        // that an innocent one never dies beside it.
        let ledger = dispatch
            .start_ledger()
            .filter(|_| delivery.redelivered && !envelope.message_id.is_empty());
        let Some(database) = ledger else {
            return run_job(&delivery, &envelope, job, policy, dispatch, received).await;
        };
        Box::pin(run_redelivered(&delivery, &envelope, job, policy, dispatch, database, received)).await
    }
    .instrument(span)
    .await
}

/// Runs a redelivered job, which may be the one that killed the last
/// worker: its start is recorded first, one such job at a time per queue,
/// and one that started too often is dead-lettered instead.
async fn run_redelivered(
    delivery: &Received,
    envelope: &Envelope,
    job: &JobDefinition,
    policy: Option<RetryPolicy>,
    dispatch: &Dispatch,
    database: &Database,
    received: Instant,
) -> Settlement {
    let queue = dispatch.jobs.queue;
    let _one_at_a_time = dispatch.jobs.redelivered.lock().await;
    let failure = match starts::record(database, queue, &envelope.message_id).await {
        Ok(starts) if !starts::too_many(starts, dispatch.max_starts) => {
            let settlement = run_job(delivery, envelope, job, policy, dispatch, received).await;
            starts::clear(database, queue, &envelope.message_id).await;
            return settlement;
        }
        Ok(starts) => Failure::CrashLoop { starts },
        Err(error) => Failure::Database {
            operation: "record of the job's start",
            error,
        },
    };
    let settlement = settle_failure(delivery, envelope, failure, policy, dispatch, received).await;
    if settlement == Settlement::Ack {
        starts::clear(database, queue, &envelope.message_id).await;
    }
    settlement
}

/// Runs an admitted job: begins its transaction, runs the handler, ends the
/// transaction, and settles.
async fn run_job(
    delivery: &Received,
    envelope: &Envelope,
    job: &JobDefinition,
    policy: Option<RetryPolicy>,
    dispatch: &Dispatch,
    received: Instant,
) -> Settlement {
    // Each step off the hot path (the database, a failure, follow-ups) is
    // boxed, so that the future of every job is small: it is allocated and
    // moved once per delivery.
    let begun = match dispatch.database {
        Some(_) => Box::pin(transaction::begin(envelope, job, dispatch)).await,
        None => Ok(None),
    };
    let tx = match begun {
        Ok(Some(Start::Tx(tx))) => Some(tx),
        Ok(Some(Start::AlreadyProcessed)) => {
            tracing::info!("already processed (its inbox row exists); acked without running");
            if is_request(delivery) {
                Box::pin(reply(delivery, envelope, dispatch, Answer::Duplicate)).await;
            }
            return Settlement::Ack;
        }
        Ok(None) => None,
        Err(failure) => {
            return Box::pin(settle_failure(
                delivery, envelope, failure, policy, dispatch, received,
            ))
            .await;
        }
    };
    let mut ctx = JobContext::new(
        envelope.message_id.clone(),
        envelope.correlation_id.clone(),
        envelope.attempt,
        job.name,
        job.queue,
    )
    .with_timestamp(*delivery.properties.timestamp())
    .with_arrival(delivery.routing_key.as_str(), envelope.job.as_deref());
    if let (Some(tx), Some(database)) = (&tx, &dispatch.database) {
        ctx = ctx.with_tx(tx.clone(), Outbox::in_schema(database.schema().clone()));
    }
    let follow_ups = ctx.follow_ups();
    let (ran, output) = match run_attempt(delivery, ctx, job).await {
        Ok(output) => (Ok(()), output),
        Err(failure) => (Err(failure), None),
    };
    if tx.as_ref().is_some_and(|tx| tx.was_wanted()) {
        dispatch.jobs.uses_database.store(true, Ordering::Relaxed);
    }
    let outcome = match ending(ran, tx) {
        Ending::Commit(tx) => Box::pin(transaction::commit(&tx)).await,
        Ending::PublishFollowUps if has_follow_ups(&follow_ups) => {
            Box::pin(publish_follow_ups(&follow_ups, dispatch)).await
        }
        Ending::PublishFollowUps => Ok(()),
        Ending::RollBack(tx, failure) => {
            Box::pin(transaction::roll_back(&tx)).await;
            Err(failure)
        }
        Ending::Fail(failure) => Err(failure),
    };
    match outcome {
        Ok(()) => {
            tracing::debug!("job succeeded");
            if let Some(output) = output {
                Box::pin(reply(delivery, envelope, dispatch, Answer::Output(output))).await;
            }
            Settlement::Ack
        }
        Err(failure) => {
            Box::pin(settle_failure(
                delivery, envelope, failure, policy, dispatch, received,
            ))
            .await
        }
    }
}

/// Whether `failure` is the database's rather than the job's: its
/// transaction could not begin, claim or commit because PostgreSQL is away,
/// or the handler failed on a database that a probe finds away. Such a
/// delivery is handed back without spending an attempt, and the queues that
/// use the database stop taking deliveries until it answers.
async fn database_away(failure: &Failure, dispatch: &Dispatch) -> bool {
    let Some(health) = &dispatch.health else {
        return false;
    };
    let away = match failure {
        Failure::Database { operation, error } if is_outage(error) => {
            health.report_outage(operation, error);
            true
        }
        Failure::Failed(error) => match outage_in_chain(error.source_error()) {
            Some(outage) => health.confirm_outage(outage).await,
            None => false,
        },
        _ => false,
    };
    if away {
        tracing::warn!(
            error = %failure.reason(),
            "PostgreSQL is away: the job is handed back to its queue, and that spends no retry"
        );
    }
    away
}

/// Runs the handler; on success, its output as JSON when the message is a
/// request.
async fn run_attempt(
    delivery: &Received,
    ctx: JobContext,
    job: &JobDefinition,
) -> Result<Option<Vec<u8>>, Failure> {
    let wants_reply = is_request(delivery);
    // The user's Deserialize runs here: a panic in it fails the attempt too.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
        job.start(ctx, &delivery.data, wants_reply)
    }))
    .map_err(|payload| Failure::Panicked(panic_message(payload.as_ref())))?;
    let handler = started.map_err(|error| Failure::BadArguments {
        job: job.name,
        error,
    })?;
    match tokio::time::timeout(job.timeout, AssertUnwindSafe(handler).catch_unwind()).await {
        Err(_elapsed) => Err(Failure::TimedOut(job.timeout)),
        Ok(Err(payload)) => Err(Failure::Panicked(panic_message(payload.as_ref()))),
        Ok(Ok(Err(error))) => Err(Failure::Failed(error)),
        Ok(Ok(Ok(output))) => Ok(output),
    }
}

/// A message that is not due yet goes on to its next delay queue, unrun.
async fn hop(
    delivery: &Received,
    envelope: &Envelope,
    eta: u64,
    dispatch: &Dispatch,
    received: Instant,
) -> Settlement {
    let published = until_published(dispatch, received, "hop to a delay queue", || {
        publish_hop(
            &dispatch.delays,
            &dispatch.publisher,
            dispatch.jobs.queue,
            &envelope.message_id,
            &delivery.data,
            &delivery.properties,
            eta,
        )
    })
    .await;
    match &published {
        Ok(bucket) => tracing::debug!(
            due_in_ms = eta.saturating_sub(now_millis()),
            delay_queue = %dispatch.delays.name(dispatch.jobs.queue, *bucket),
            "not due yet; sent on to a delay queue"
        ),
        Err(error) => tracing::error!(
            error = %error_chain_text(error),
            "could not send a message that is not due yet to a delay queue; returning it to the queue"
        ),
    }
    Settlement::after_republish(&published)
}

/// Retries or dead-letters a failed delivery, as [`decide`] says; or, when
/// the failure is the database's (see [`database_away`]), hands it back.
async fn settle_failure(
    delivery: &Received,
    envelope: &Envelope,
    failure: Failure,
    policy: Option<RetryPolicy>,
    dispatch: &Dispatch,
    received: Instant,
) -> Settlement {
    if database_away(&failure, dispatch).await {
        return Settlement::Requeue;
    }
    let reason = failure.reason();
    let queue = dispatch.jobs.queue;
    match decide(&failure, envelope.attempt, policy, fastrand::f64()) {
        Decision::Retry { attempt, delay } => {
            let retry = Retry {
                queue,
                message_id: &envelope.message_id,
                attempt,
                delay,
                error: &reason,
            };
            let published = until_published(dispatch, received, "retry", || {
                publish_retry(
                    &dispatch.delays,
                    &dispatch.publisher,
                    retry,
                    &delivery.data,
                    &delivery.properties,
                )
            })
            .await;
            match &published {
                Ok(()) => {
                    tracing::warn!(error = %reason, next_attempt = attempt, retry_in = ?delay, "job failed; retrying");
                }
                Err(error) => tracing::error!(
                    error = %reason,
                    retry_error = %error_chain_text(error),
                    "job failed and its retry could not be scheduled; returning it to the queue"
                ),
            }
            Settlement::after_republish(&published)
        }
        Decision::DeadLetter { why } => {
            let published = until_published(dispatch, received, "dead letter", || {
                publish_dead_letter(
                    &dispatch.publisher,
                    queue,
                    &delivery.data,
                    &delivery.properties,
                    &reason,
                    envelope.attempt,
                )
            })
            .await;
            if published.is_ok() && is_request(delivery) {
                let kind = match why {
                    DeadLetterWhy::RetriesSpent => "retryable",
                    DeadLetterWhy::NotRetryable => "permanent",
                };
                let answer = Answer::Failed {
                    kind,
                    error: &reason,
                };
                Box::pin(reply(delivery, envelope, dispatch, answer)).await;
            }
            match (&published, why) {
                (Ok(()), DeadLetterWhy::RetriesSpent) => tracing::warn!(
                    error = %reason,
                    "job failed and its retries are spent; moved to the dead-letter queue"
                ),
                (Ok(()), DeadLetterWhy::NotRetryable) => tracing::warn!(
                    error = %reason,
                    "job failed and cannot be retried; moved to the dead-letter queue"
                ),
                // Not acked, so not lost: the broker gets it back and it is tried again.
                (Err(error), _) => tracing::error!(
                    error = %reason,
                    dead_letter_error = %error_chain_text(error),
                    "job failed and could not be dead-lettered; returning it to the queue"
                ),
            }
            Settlement::after_republish(&published)
        }
    }
}
