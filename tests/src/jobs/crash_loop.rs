//! Jobs of the crash-loop tests: one message of them aborts the worker
//! process every time it runs; the others write their effect.

use eda_worker::prelude::*;

use super::inbox::{DbWrite, write_effect};

/// Arguments of the crash-loop jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaybeAbort {
    /// The effect to write when the job does not abort.
    pub write: DbWrite,
    /// Abort the process instead.
    pub abort: bool,
}

/// Aborts the process when asked (as a segfault in a native library or an
/// out-of-memory kill would end it), else writes its effect.
pub async fn abort_or_write(ctx: &JobContext, args: &MaybeAbort) -> Result<(), JobError> {
    if args.abort {
        std::process::abort();
    }
    write_effect(ctx, &args.write).await
}

crate::job_family! {
    /// Aborts the worker, or writes its effect.
    fn(MaybeAbort) => abort_or_write;
    crash_loop_classic(queue = "eda-test.crash-loop");
    crash_loop_quorum(queue = "eda-test.crash-loop-quorum", queue_type = "quorum");
}
