//! Running one delivery: find the job by its `type`, decode the arguments,
//! run the handler under its timeout with panics caught, and dead-letter what
//! did not succeed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use lapin::message::Delivery;
use tracing::Instrument;

use super::ack::Settlement;
use super::decision::{Decision, Failure, decide, panic_message};
use crate::JobContext;
use crate::broker::Publisher;
use crate::dead_letter::publish_dead_letter;
use crate::job::JobDefinition;
use crate::wire::Envelope;

/// The jobs consumed from one queue, by wire name.
#[derive(Debug)]
pub(crate) struct QueueJobs {
    pub(crate) queue: &'static str,
    jobs: HashMap<&'static str, JobDefinition>,
}

impl QueueJobs {
    pub(crate) fn new(
        queue: &'static str,
        definitions: impl IntoIterator<Item = JobDefinition>,
    ) -> Self {
        let jobs = definitions
            .into_iter()
            .filter(|job| job.queue == queue)
            .map(|job| (job.name, job))
            .collect();
        QueueJobs { queue, jobs }
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
    pub(crate) dead_letters: Arc<Publisher>,
}

/// Handles one delivery to the end and says how to settle it. Never panics
/// because a handler did: the panic is this attempt's failure.
pub(crate) async fn handle_delivery(delivery: Delivery, dispatch: &Dispatch) -> Settlement {
    let Dispatch { jobs, dead_letters } = dispatch;
    let envelope = Envelope::from_properties(&delivery.properties);
    let span = tracing::info_span!(
        "job",
        job = envelope.job.as_deref().unwrap_or("?"),
        queue = jobs.queue,
        message_id = %envelope.message_id,
        correlation_id = envelope.correlation_id.as_deref().unwrap_or(""),
        attempt = envelope.attempt,
    );
    async {
        match run_attempt(&delivery, &envelope, jobs).await {
            Ok(()) => {
                tracing::debug!("job succeeded");
                Settlement::Ack
            }
            Err(failure) => {
                settle_failure(&delivery, &envelope, jobs.queue, failure, dead_letters).await
            }
        }
    }
    .instrument(span)
    .await
}

async fn run_attempt(
    delivery: &Delivery,
    envelope: &Envelope,
    jobs: &QueueJobs,
) -> Result<(), Failure> {
    let job = jobs.resolve(envelope)?;
    let ctx = JobContext::new(
        envelope.message_id.clone(),
        envelope.correlation_id.clone(),
        envelope.attempt,
        job.name,
        job.queue,
    );
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

async fn settle_failure(
    delivery: &Delivery,
    envelope: &Envelope,
    queue: &'static str,
    failure: Failure,
    dead_letters: &Publisher,
) -> Settlement {
    let reason = failure.reason();
    match decide(&failure) {
        Decision::DeadLetter => {
            let published = publish_dead_letter(
                dead_letters,
                queue,
                &delivery.data,
                &delivery.properties,
                &reason,
                envelope.attempt,
            )
            .await;
            match published {
                Ok(()) => {
                    tracing::warn!(error = %reason, "job failed, moved to the dead-letter queue");
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
