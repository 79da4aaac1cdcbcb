//! The job of the flow-control test: it waits at a gate the test opens,
//! counting how many run at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use eda_worker::prelude::*;
use tokio::sync::Semaphore;

/// Released one permit per job by the flow-control test.
pub static FLOW_GATE: Semaphore = Semaphore::const_new(0);
/// Jobs of the flow-control queue running now.
pub static FLOW_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// The most that ever ran at once.
pub static FLOW_MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Jobs that got past the gate.
pub static FLOW_DONE: AtomicUsize = AtomicUsize::new(0);

/// Waits at the gate, tracking how many run at once.
#[job(queue = "eda-test.flow-control")]
pub async fn gated(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    let now = FLOW_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    FLOW_MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
    let permit = FLOW_GATE.acquire().await.map_err(JobError::permanent)?;
    permit.forget();
    FLOW_RUNNING.fetch_sub(1, Ordering::SeqCst);
    FLOW_DONE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}
