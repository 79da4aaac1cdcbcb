//! Jobs of the enqueue tests: one that records what arrived, and jobs that
//! are only ever enqueued.

use eda_worker::prelude::*;

use super::{do_nothing, record_run};

/// Rich arguments, to check that typed args arrive intact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signup {
    /// An integer.
    pub user_id: i64,
    /// A string with non-ASCII text.
    pub email: String,
    /// A nested list.
    pub tags: Vec<String>,
    /// An optional field.
    pub referrer: Option<u32>,
}

crate::job_family! {
    /// Records its run.
    fn(Signup) => record_run;
    roundtrip(queue = "eda-test.roundtrip");
}

crate::job_family! {
    /// Only ever enqueued, never run.
    fn(u32) => do_nothing;
    confirmed(queue = "eda-test.confirms");
    // A policy makes the broker refuse publishes to this queue when it is full.
    refused(queue = "eda-test.nack");
    // The attribution test deletes this queue under the client...
    to_deleted_queue(queue = "eda-test.unroutable");
    // ...and keeps this one.
    to_kept_queue(queue = "eda-test.routable");
    after_reconnect(queue = "eda-test.client-reconnect");
    // The client reaches the broker through a proxy that cuts it off.
    during_outage(queue = "eda-test.enqueue-outage");
}

crate::job_family! {
    /// Only ever enqueued, never run.
    fn(String) => do_nothing;
    oversized(queue = "eda-test.oversize");
}
