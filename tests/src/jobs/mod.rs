//! The jobs of the integration tests, one module per capability tested.
//! Each test has its own queue, so tests run in parallel without seeing
//! each other's messages; a test reads it from its job (`<flaky as Job>::QUEUE`).
//!
//! Jobs that differ only in their queue and options come from one
//! [`job_family!`](crate::job_family) each.

pub mod broker_faults;
pub mod chaos;
pub mod crash_loop;
pub mod database_outage;
pub mod dead_letter_admin;
pub mod dead_letters;
pub mod enqueue;
pub mod events;
pub mod flow_control;
pub mod follow_ups;
pub mod inbox;
pub mod memory_alarm;
pub mod migrations;
pub mod outbox;
pub mod quorum_queues;
pub mod requests;
pub mod retries;
pub mod settlement;
pub mod shutdown;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use eda_worker::prelude::*;

/// Defines one `#[job]` per line, all with the same one-line doc, argument
/// type and body (an async fn taking `(&JobContext, &Args)`): the jobs of a
/// family differ only in their attribute (their queue, as each test has its
/// own, and options).
///
/// ```no_run
/// use eda_worker_tests::jobs::record_run;
///
/// eda_worker_tests::job_family! {
///     /// Records its run.
///     fn(u32) => record_run;
///     audit_signup(queue = "example.audit-signup");
///     audit_login(queue = "example.audit-login", retries = 0);
/// }
/// ```
#[macro_export]
macro_rules! job_family {
    (
        #[doc = $doc:literal]
        fn($args:ty) => $body:path;
        $($name:ident($($option:tt)*);)+
    ) => {$(
        #[doc = $doc]
        #[::eda_worker::job($($option)*)]
        pub async fn $name(
            ctx: ::eda_worker::JobContext,
            args: $args,
        ) -> ::core::result::Result<(), ::eda_worker::JobError> {
            $body(&ctx, &args).await
        }
    )+};
}

/// What a job saw when it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// `ctx.message_id()`.
    pub message_id: String,
    /// `ctx.correlation_id()`.
    pub correlation_id: Option<String>,
    /// `ctx.attempt()`.
    pub attempt: u32,
    /// The arguments, re-serialized.
    pub args: serde_json::Value,
    /// When it ran, ms since the epoch.
    pub at_ms: u64,
}

static RUNS: Mutex<Option<HashMap<&'static str, Vec<Run>>>> = Mutex::new(None);

/// Records that the job ran, under its queue.
pub fn record(ctx: &JobContext, args: &impl Serialize) {
    let run = Run {
        message_id: ctx.message_id().to_owned(),
        correlation_id: ctx.correlation_id().map(str::to_owned),
        attempt: ctx.attempt(),
        args: serde_json::to_value(args).expect("args serialize"),
        at_ms: crate::now_millis(),
    };
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .entry(ctx.queue())
        .or_default()
        .push(run);
}

/// The runs recorded for jobs of `queue`.
pub fn runs(queue: &str) -> Vec<Run> {
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|runs| runs.get(queue).cloned())
        .unwrap_or_default()
}

/// The runs of message `id` on `queue`, in the order they ran.
pub fn runs_of(queue: &str, id: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = runs(queue)
        .into_iter()
        .filter(|run| run.message_id == id)
        .collect();
    runs.sort_by_key(|run| run.at_ms);
    runs
}

/// A body: records the run and succeeds.
pub async fn record_run(ctx: &JobContext, args: &impl Serialize) -> Result<(), JobError> {
    record(ctx, args);
    Ok(())
}

/// A body: does nothing (for jobs that are only ever enqueued, never run).
pub async fn do_nothing<T>(_ctx: &JobContext, _args: &T) -> Result<(), JobError> {
    Ok(())
}

/// A body: records the run, then fails with a retryable error on attempts
/// before `succeed_on`, and succeeds from that attempt on.
pub async fn fail_until(ctx: &JobContext, succeed_on: &u32) -> Result<(), JobError> {
    record(ctx, succeed_on);
    if ctx.attempt() < *succeed_on {
        return Err(
            std::io::Error::other(format!("attempt {} failed on purpose", ctx.attempt())).into(),
        );
    }
    Ok(())
}

/// Arguments that only tell messages apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Numbered {
    /// Which message.
    pub n: u32,
}
