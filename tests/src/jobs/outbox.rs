//! Jobs of the outbox tests: targets of outbox rows, only ever enqueued
//! through the outbox, and one consumer deduplicated by its inbox.

use super::do_nothing;
use super::inbox::{DbWrite, write_effect};

crate::job_family! {
    /// Only ever enqueued through the outbox, never run.
    fn(u32) => do_nothing;
    // The commit/rollback test (and rows for other tests' schemas).
    outbox_target(queue = "eda-test.outbox");
    outbox_two_relays(queue = "eda-test.outbox-two-relays");
    // The test that deletes this queue under the relay...
    outbox_redeclare(queue = "eda-test.outbox-redeclare");
    // ...and batches its rows with rows for this one.
    outbox_redeclare_other(queue = "eda-test.outbox-redeclare-other");
    // The test with a schema named like an SQL keyword.
    outbox_keyword_schema(queue = "eda-test.outbox-keyword-schema");
    // Rows sent beside a row for a missing exchange.
    outbox_beside_missing_exchange(queue = "eda-test.outbox-beside-missing-exchange");
}

crate::job_family! {
    /// Writes its effect in the job's transaction (deduplicated by the inbox).
    fn(DbWrite) => write_effect;
    // The relay re-send test.
    outbox_resend(queue = "eda-test.outbox-resend", retries = 0);
}
