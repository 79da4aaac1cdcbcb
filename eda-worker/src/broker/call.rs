//! Every broker call has a bound: a broker that is away, black-holed or
//! blocking the connection (a memory or disk alarm) answers nothing, and a
//! worker must neither hang at start nor at shutdown because of it.

use std::future::Future;
use std::time::Duration;

use crate::Error;

/// How long a declare, qos, consume, cancel or close may take.
pub(crate) const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cancel or close waits after a loss: the connection is most
/// likely gone, and a close that waits for an answer only delays the
/// reconnect.
pub(crate) const CLOSE_AFTER_LOSS: Duration = Duration::from_secs(1);

/// How long a cancel or close waits: [`BROKER_CALL_TIMEOUT`] on a healthy
/// stop, [`CLOSE_AFTER_LOSS`] once something was `lost`.
pub(crate) fn close_wait(lost: bool) -> Duration {
    if lost {
        CLOSE_AFTER_LOSS
    } else {
        BROKER_CALL_TIMEOUT
    }
}

/// Runs `call` for at most [`BROKER_CALL_TIMEOUT`]; `operation` names it in
/// the error (e.g. ``declare of queue `email` ``).
pub(crate) async fn bounded<T>(
    operation: impl FnOnce() -> String,
    call: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(BROKER_CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::Broker {
            operation: operation(),
            source,
        }),
        Err(_elapsed) => Err(Error::BrokerTimeout {
            operation: operation(),
            timeout: BROKER_CALL_TIMEOUT,
        }),
    }
}
