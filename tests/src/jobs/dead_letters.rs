//! Jobs of the dead-letter tests, all on one queue with `retries = 0`:
//! each fails in its own way.

use std::time::Duration;

use eda_worker::prelude::*;

use super::{Numbered, record_run};

crate::job_family! {
    /// Records its run.
    fn(Numbered) => record_run;
    dead_letter_echo(queue = "eda-test.dead-letters");
}

/// Always fails with a retryable error.
#[job(queue = "eda-test.dead-letters", retries = 0)]
pub async fn dead_letter_fails(_ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    Err(std::io::Error::other(format!(
        "smtp server said no to {}",
        args.n
    )))?;
    Ok(())
}

/// Fails permanently with an error holding a URL with a password.
#[job(queue = "eda-test.dead-letters", retries = 0)]
pub async fn dead_letter_leaks(_ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    Err(JobError::permanent(format!(
        "GET https://mailer:s3cret@mail.example/send/{} refused",
        args.n
    )))
}

/// Always panics.
#[job(queue = "eda-test.dead-letters", retries = 0)]
pub async fn dead_letter_panics(_ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    panic!("handler exploded on {}", args.n);
}

/// Runs past its timeout.
#[job(queue = "eda-test.dead-letters", timeout = "200ms", retries = 0)]
pub async fn dead_letter_sleeps(_ctx: JobContext, _args: Numbered) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}
