//! Jobs on a quorum queue.

use super::{fail_until, record_run};

crate::job_family! {
    /// Fails until attempt `args`, on a quorum queue.
    fn(u32) => fail_until;
    quorum_flaky(queue = "eda-test.quorum", queue_type = "quorum", retries = 2, backoff = "100ms..200ms");
}

crate::job_family! {
    /// Records its run, on a quorum queue.
    fn(u32) => record_run;
    quorum_echo(queue = "eda-test.quorum", queue_type = "quorum");
}

crate::job_family! {
    /// Fails until attempt `args`, on a quorum queue (its DLQ classic, as an older eda-worker declared it).
    fn(u32) => fail_until;
    quorum_legacy_dlq(queue = "eda-test.quorum-legacy", queue_type = "quorum", retries = 0);
}
