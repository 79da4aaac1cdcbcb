//! Jobs of the memory-alarm test, which runs on a node of its own.

use eda_worker::prelude::*;

use super::record;

/// Records its run; job `n` fails its first attempt when `n` is a multiple
/// of [`FAILS_ONCE_EVERY`], so that its retry must be published.
#[job(queue = "eda-test.alarm", retries = 3, backoff = "100ms..1s")]
pub async fn alarm_job(ctx: JobContext, n: u32) -> Result<(), JobError> {
    record(&ctx, &n);
    if n.is_multiple_of(FAILS_ONCE_EVERY) && ctx.attempt() == 0 {
        return Err(JobError::retryable(format!(
            "job {n} fails once on purpose"
        )));
    }
    Ok(())
}

/// Every this many jobs, one fails once.
pub const FAILS_ONCE_EVERY: u32 = 100;
