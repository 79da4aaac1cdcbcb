//! Jobs of the chaos test: each writes one row and enqueues one follow-up
//! through the outbox, in its transaction; the follow-up writes one row.

use eda_worker::prelude::*;

use super::inbox::{DbWrite, write_effect};

/// Arguments of the chaos job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosArgs {
    /// Its own row.
    pub write: DbWrite,
    /// The table its follow-up writes into.
    pub follow_up_table: String,
}

/// Writes its row and enqueues its follow-up, both in its transaction.
#[job(queue = "eda-test.chaos", retries = 10, backoff = "100ms..2s")]
pub async fn chaos_job(ctx: JobContext, args: ChaosArgs) -> Result<(), JobError> {
    write_effect(&ctx, &args.write).await?;
    let follow_up = DbWrite::new(&args.follow_up_table, args.write.n);
    ctx.enqueue(chaos_follow_up, follow_up).await?;
    Ok(())
}

/// Writes its row.
#[job(
    queue = "eda-test.chaos-follow-up",
    retries = 10,
    backoff = "100ms..2s"
)]
pub async fn chaos_follow_up(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}
