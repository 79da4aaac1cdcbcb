//! Two `#[job]`s with one wire name linked into one binary: the worker
//! refuses to start and names both functions.

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

    #[job(queue = "eda-test.duplicates-legacy", name = "charge")]
    pub async fn charge(_ctx: JobContext, _args: String) -> Result<(), JobError> {
        Ok(())
    }
}

#[test]
fn two_jobs_with_one_wire_name_stop_the_worker_at_start() {
    let error = Worker::new(worker_config()).expect_err("duplicate wire names are refused");
    assert!(
        matches!(
            error,
            Error::DuplicateJob {
                name: "charge",
                first: "duplicates::billing::charge_card",
                second: "duplicates::legacy::charge"
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("`duplicates::billing::charge_card` and `duplicates::legacy::charge`"),
        "{text}"
    );
    assert!(text.contains("#[job(name = "), "says what to do: {text}");
    // Naming queues does not get around it: the registry as a whole is refused.
    assert!(Worker::new(worker_config().queues(["eda-test.duplicates"])).is_err());
}
