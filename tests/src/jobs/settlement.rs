//! Jobs of the settlement test: one whose dead letter the broker refuses,
//! and one on another queue of the same worker that must not pay for it.

use eda_worker::prelude::*;

use super::{record, record_run};

/// Records its run and fails permanently: it is dead-lettered at once.
#[job(queue = "eda-test.stuck")]
pub async fn stuck(ctx: JobContext, n: u32) -> Result<(), JobError> {
    record(&ctx, &n);
    Err(JobError::permanent(format!("job {n} fails for good")))
}

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    // Shares a worker with `stuck`.
    steady(queue = "eda-test.steady");
}

/// Records its run and fails permanently (its worker holds a dead letter
/// only briefly).
#[job(queue = "eda-test.stuck-briefly")]
pub async fn stuck_briefly(ctx: JobContext, n: u32) -> Result<(), JobError> {
    record(&ctx, &n);
    Err(JobError::permanent(format!("job {n} fails for good")))
}
