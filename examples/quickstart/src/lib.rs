//! The quickstart app: one job, sending a welcome email (printed, here).
//!
//! `cargo run -p quickstart --bin demo` enqueues a batch, runs a worker until
//! every job ran (some after a retry), and shows the dead letter. `cargo run -p quickstart --bin worker -- run`
//! is the app's worker command.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use eda_worker::prelude::*;

/// The arguments of [`send_welcome`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// The new user.
    pub user_id: i64,
    /// Where the email goes.
    pub email: String,
}

/// Message ids of the welcome emails this process sent (the demo waits on it).
pub static SENT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Sends the welcome email of a new user. The pretend mail server refuses
/// every fifth user's first try ("try again later"), so the demo shows
/// retries; an address without `@` is a permanent failure.
#[job(
    queue = "quickstart.email",
    retries = 3,
    timeout = "30s",
    backoff = "1s..30s"
)]
pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
    if !args.email.contains('@') {
        return Err(JobError::permanent(format!(
            "`{}` is not an email address",
            args.email
        )));
    }
    if args.user_id % 5 == 0 && ctx.attempt() == 0 {
        println!(
            "mail server busy for {} (attempt 0): retrying in about a second",
            args.email
        );
        Err(std::io::Error::other(
            "smtp 451: mailbox busy, try again later",
        ))?;
    }
    println!(
        "sent welcome email to {} (user {}, message {}, attempt {})",
        args.email,
        args.user_id,
        ctx.message_id(),
        ctx.attempt()
    );
    SENT.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(ctx.message_id().to_owned());
    Ok(())
}
