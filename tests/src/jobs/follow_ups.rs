//! Jobs of the follow-up tests: handlers that enqueue further jobs with
//! `ctx.enqueue` (through the outbox with a database, straight to the
//! broker without) or with `tx.enqueue`.

use eda_worker::prelude::*;

use super::do_nothing;

/// Arguments of the parent jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Passed on to the child.
    pub n: u32,
    /// Fail (permanently) after enqueueing the child.
    pub fail: bool,
}

/// A body: enqueues `child` with `args.n`, then fails if asked.
async fn enqueue_child<J: Job<Args = u32>>(
    ctx: &JobContext,
    child: J,
    args: &Chain,
) -> Result<(), JobError> {
    ctx.enqueue(child, args.n).await?;
    if args.fail {
        return Err(JobError::permanent("failing after enqueueing a child"));
    }
    Ok(())
}

/// Enqueues a child in its transaction, then fails if asked.
#[job(queue = "eda-test.chain", retries = 0)]
pub async fn chain_parent(ctx: JobContext, args: Chain) -> Result<(), JobError> {
    enqueue_child(&ctx, chain_child, &args).await
}

/// Enqueues a child, then fails if asked.
#[job(queue = "eda-test.chain-no-database", retries = 0)]
pub async fn chain_parent_without_database(ctx: JobContext, args: Chain) -> Result<(), JobError> {
    enqueue_child(&ctx, chain_child_without_database, &args).await
}

/// Holds its transaction: `ctx.enqueue` is then an error (not a deadlock),
/// and `tx.enqueue` works.
#[job(queue = "eda-test.tx-held", retries = 0)]
pub async fn enqueues_while_holding_the_tx(ctx: JobContext, n: u32) -> Result<(), JobError> {
    let mut tx = ctx.tx().await?;
    let enqueue_error = match ctx.enqueue(tx_held_child, n).await {
        Ok(_) => return Err(JobError::permanent("ctx.enqueue worked while tx was held")),
        Err(error) => error.to_string(),
    };
    if !enqueue_error.contains("drop it first, or call `enqueue` on it") {
        return Err(JobError::permanent(format!(
            "unexpected error: {enqueue_error}"
        )));
    }
    tx.enqueue(tx_held_child, n).await?;
    Ok(())
}

crate::job_family! {
    /// A child: never runs (its queue is not consumed, the test reads it).
    fn(u32) => do_nothing;
    chain_child(queue = "eda-test.chain-child");
    chain_child_without_database(queue = "eda-test.chain-no-database-child");
    tx_held_child(queue = "eda-test.tx-held-child");
}
