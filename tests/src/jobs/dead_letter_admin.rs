//! Jobs of the dead-letter tooling tests (list, replay, purge), one queue
//! per test: each fails while its test switches it to fail, so that the
//! test can make dead letters and then replay them successfully.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use eda_worker::prelude::*;

use super::{Numbered, record};

/// While set for a queue, that queue's dead-letter tooling job fails permanently.
pub struct FailSwitches(Mutex<Option<HashMap<&'static str, bool>>>);

impl FailSwitches {
    /// Makes the job of `queue` fail (`true`) or succeed (`false`).
    pub fn set(&self, queue: &'static str, fail: bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(queue, fail);
    }

    fn fails(&self, queue: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|switches| switches.get(queue).copied())
            .unwrap_or(false)
    }
}

/// The switches of the dead-letter tooling jobs (off unless a test sets them).
pub static DLQ_TOOL_FAILS: FailSwitches = FailSwitches(Mutex::new(None));

/// Fails while the queue's switch says so, else records the run.
async fn fail_or_record(ctx: &JobContext, args: &Numbered) -> Result<(), JobError> {
    if DLQ_TOOL_FAILS.fails(ctx.queue()) {
        return Err(JobError::permanent(format!("record {} is broken", args.n)));
    }
    record(ctx, args);
    Ok(())
}

crate::job_family! {
    /// Fails permanently while switched to fail, else records its run.
    fn(Numbered) => fail_or_record;
    dlq_tool_list(queue = "eda-test.dlq-tool-list", retries = 0);
    dlq_tool_limit(queue = "eda-test.dlq-tool-limit", retries = 0);
    dlq_tool_replay_id(queue = "eda-test.dlq-tool-replay-id", retries = 0);
    dlq_tool_replay_all(queue = "eda-test.dlq-tool-replay-all", retries = 0);
    dlq_tool_unknown_id(queue = "eda-test.dlq-tool-unknown-id", retries = 0);
    dlq_tool_purge(queue = "eda-test.dlq-tool-purge", retries = 0);
    dlq_tool_cli_list(queue = "eda-test.dlq-tool-cli-list", retries = 0);
    dlq_tool_cli_purge(queue = "eda-test.dlq-tool-cli-purge", retries = 0);
}
