//! Jobs of the tests that break the broker under a worker.

use eda_worker::prelude::*;

use super::{do_nothing, record_run};

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    reconnect_echo(queue = "eda-test.reconnect");
    // The test that deletes this queue under a running worker.
    deleted_queue_echo(queue = "eda-test.queue-deleted");
    // The serial test whose worker the broker refuses for a while.
    refusal_echo(queue = "eda-test.refusal");
    // The test of a URL that lists several nodes.
    cluster_echo(queue = "eda-test.several-nodes");
}

crate::job_family! {
    /// Never runs: its queue exists with other arguments.
    fn(u32) => do_nothing;
    mismatched(queue = "eda-test.mismatch");
}

/// Always fails permanently (its test deletes the dead-letter queue under
/// a running worker).
#[job(queue = "eda-test.dlq-recovery")]
pub async fn always_fails(_ctx: JobContext, args: u32) -> Result<(), JobError> {
    Err(JobError::permanent(format!("record {args} does not exist")))
}

crate::job_family! {
    /// Writes its effect, on a quorum queue of a three-node cluster.
    fn(super::inbox::DbWrite) => super::inbox::write_effect;
    // The serial test that stops the node leading this queue midway.
    cluster_write(queue = "eda-test.cluster", queue_type = "quorum");
}
