//! Jobs of the retry and scheduling tests.

use std::time::Duration;

use eda_worker::prelude::*;

use super::{fail_until, record, record_run};

crate::job_family! {
    /// Fails with a retryable error on attempts before `args`, then succeeds.
    fn(u32) => fail_until;
    // Retries 200 ms, 400 ms, ... apart.
    flaky(queue = "eda-test.retries", retries = 3, backoff = "200ms..10s");
    // Retries after exactly 1 s (the head-of-line test).
    flaky_each_second(queue = "eda-test.head-of-line", backoff = "1s..1s");
    // Subscribed to the fanout exchange of the event-retry test.
    subscriber_flaky(queue = "eda-test.subscriber", backoff = "100ms..100ms");
    // The test that deletes delay queues under the client and the worker.
    flaky_after_delay(queue = "eda-test.delay-deleted", backoff = "100ms..100ms");
}

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    scheduled(queue = "eda-test.scheduled");
}

/// Always fails with a retryable error; 2 retries 100 ms apart.
#[job(queue = "eda-test.exhausted", retries = 2, backoff = "100ms..100ms")]
pub async fn never_succeeds(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Err(std::io::Error::other(format!("upstream 503 for {args}")))?;
    Ok(())
}

/// Fails permanently at once.
#[job(queue = "eda-test.exhausted", retries = 5, backoff = "100ms..100ms")]
pub async fn rejects(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Err(JobError::permanent(format!("order {args} does not exist")))
}

/// Panics on its first attempt.
#[job(queue = "eda-test.crash-retries", backoff = "100ms..100ms")]
pub async fn panics_once(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    assert!(ctx.attempt() > 0, "first attempt of {args} panics");
    Ok(())
}

/// Runs past its timeout on its first attempt.
#[job(
    queue = "eda-test.crash-retries",
    timeout = "300ms",
    backoff = "100ms..100ms"
)]
pub async fn hangs_once(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    if ctx.attempt() == 0 {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    Ok(())
}

/// Always fails with a retryable error; 1 retry 100 ms later (the old
/// wire format's test).
#[job(queue = "eda-test.old-format", retries = 1, backoff = "100ms..100ms")]
pub async fn old_format_fails(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Err(std::io::Error::other(format!("upstream 503 for {args}")))?;
    Ok(())
}
