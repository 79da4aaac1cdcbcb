//! The job registry: two `#[job]`s of one queue with one wire name linked
//! into one binary make the worker refuse to start, naming both functions.
//!
//! (A test binary of its own: its duplicate jobs would stop every worker of
//! any other test linked with them.)

use eda_worker::prelude::*;
use eda_worker::{Error, Worker};
use eda_worker_tests::worker_config;

mod billing {
    use super::*;

    #[job(queue = "eda-test.duplicates", name = "charge")]
    pub async fn charge_card(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
        Ok(())
    }
}

mod legacy {
    use super::*;

    #[job(queue = "eda-test.duplicates", name = "charge")]
    pub async fn charge(_ctx: JobContext, _args: String) -> Result<(), JobError> {
        Ok(())
    }
}

#[test]
fn two_jobs_of_one_queue_with_one_wire_name_stop_the_worker_at_start() {
    let error = Worker::new(worker_config()).expect_err("duplicate wire names are refused");
    assert!(
        matches!(
            error,
            Error::DuplicateJob {
                queue: "eda-test.duplicates",
                name: "charge",
                first: "registry::billing::charge_card",
                second: "registry::legacy::charge"
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("`registry::billing::charge_card` and `registry::legacy::charge`"),
        "{text}"
    );
    assert!(text.contains("#[job(name = "), "says what to do: {text}");
    // Naming queues does not get around it: the registry as a whole is refused.
    let queue = <billing::charge_card as Job>::QUEUE;
    assert!(Worker::new(worker_config().queues([queue])).is_err());
}
