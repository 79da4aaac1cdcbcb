//! Jobs of the shutdown tests (run by the `test-worker` subprocess): each
//! leaves its effect in a file, so that the test sees what ran, and how often.

use std::io::Write;
use std::time::Duration;

use eda_worker::prelude::*;

/// Arguments of the jobs that leave their effect in a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effect {
    /// Which job.
    pub id: u32,
    /// The file each run appends its id to.
    pub log: String,
    /// How long the job works.
    pub work_ms: u64,
}

fn append_effect(args: &Effect) -> Result<(), JobError> {
    // One write of a short line to an O_APPEND file is atomic, so concurrent
    // jobs (and processes) never interleave their lines.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)?;
    file.write_all(format!("{}\n", args.id).as_bytes())?;
    Ok(())
}

async fn work(args: &Effect) {
    tokio::time::sleep(Duration::from_millis(args.work_ms)).await;
}

/// A body: works for `work_ms`, then appends the id to the log.
async fn work_then_append(_ctx: &JobContext, args: &Effect) -> Result<(), JobError> {
    work(args).await;
    append_effect(args)
}

/// A body: appends the id to the log when it starts, then works for `work_ms`.
async fn append_then_work(_ctx: &JobContext, args: &Effect) -> Result<(), JobError> {
    append_effect(args)?;
    work(args).await;
    Ok(())
}

crate::job_family! {
    /// Works for `work_ms`, then appends its id to the log.
    fn(Effect) => work_then_append;
    // The graceful-shutdown test.
    slow_effect(queue = "eda-test.shutdown");
}

crate::job_family! {
    /// Appends its id when it starts, then works for `work_ms`.
    fn(Effect) => append_then_work;
    // The second-signal test.
    long_effect(queue = "eda-test.interrupt");
    // The shutdown-deadline test.
    deadline_effect(queue = "eda-test.deadline");
}

/// Fails (retryable, then for good) with an error holding a URL with a
/// password, which the worker's log must show redacted.
#[job(queue = "eda-test.leaky-log", retries = 1, backoff = "10ms..10ms")]
pub async fn leaky_log(_ctx: JobContext, n: u32) -> Result<(), JobError> {
    Err(JobError::retryable(format!(
        "GET https://user:secret@host/x/{n} refused"
    )))
}
