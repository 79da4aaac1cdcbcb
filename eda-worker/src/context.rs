//! [`JobContext`]: what a handler knows about the message it runs for.

use uuid::Uuid;

/// Handed to every handler: which message this is, which attempt, and the
/// correlation id that ties it to the request that caused it.
#[derive(Debug, Clone)]
pub struct JobContext {
    message_id: String,
    correlation_id: Option<String>,
    attempt: u32,
    job: &'static str,
    queue: &'static str,
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
        }
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
}
