//! Bounded waits: a test waits for an effect it can observe, never for a
//! fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// The longest any test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(30);

/// Waits until `condition` holds, polling, for at most `timeout`; panics
/// with `what` when it never does.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
