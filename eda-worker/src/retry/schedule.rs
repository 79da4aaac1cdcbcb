//! How a message gets to a delay queue: a failed attempt's retry, a message
//! that is not due yet (a hop), and a scheduled enqueue all go through
//! [`publish_delayed`], confirmed, before the original is acked.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};

use super::DelayQueues;
use crate::Error;
use crate::broker::Publisher;
use crate::wire::{
    HEADER_ATTEMPT, HEADER_ERROR, HEADER_ETA, millis_i64, now_millis, republished_properties,
};

/// Publishes a message that is due at `eta_ms` (ms since the epoch) for job
/// queue `queue` into the delay queue of its next hop, confirmed.
/// `properties` must already carry the `x-eda-eta` header. Returns the bucket
/// used.
pub(crate) async fn publish_delayed(
    delays: &DelayQueues,
    publisher: &Publisher,
    queue: &str,
    message_id: &str,
    body: &[u8],
    properties: BasicProperties,
    eta_ms: u64,
) -> Result<Duration, Error> {
    let remaining = Duration::from_millis(eta_ms.saturating_sub(now_millis()));
    let bucket = delays.plan(remaining);
    publisher
        .publish(
            "",
            &delays.name(queue, bucket),
            message_id,
            body,
            properties,
        )
        .await?;
    Ok(bucket)
}

/// A failed attempt, to be tried again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry<'a> {
    /// The job queue.
    pub(crate) queue: &'a str,
    /// The message id, stable across retries.
    pub(crate) message_id: &'a str,
    /// The next attempt's number.
    pub(crate) attempt: u32,
    /// How long to wait before it.
    pub(crate) delay: Duration,
    /// Why the last attempt failed (capped), for `x-eda-error`.
    pub(crate) error: &'a str,
}

/// Schedules `retry` of the message whose body and properties are `body` and
/// `original`: a copy with the next attempt number, its due time and the last
/// error goes to the job queue's delay queues, confirmed.
pub(crate) async fn publish_retry(
    delays: &DelayQueues,
    publisher: &Publisher,
    retry: Retry<'_>,
    body: &[u8],
    original: &BasicProperties,
) -> Result<(), Error> {
    let delay_ms = u64::try_from(retry.delay.as_millis()).unwrap_or(u64::MAX);
    let eta = now_millis().saturating_add(delay_ms);
    let properties = retry_properties(original, retry.attempt, eta, retry.error);
    publish_delayed(
        delays,
        publisher,
        retry.queue,
        retry.message_id,
        body,
        properties,
        eta,
    )
    .await
    .map(|_bucket| ())
}

/// Sends a message that is not due yet (`x-eda-eta` at `eta`) on to its next
/// delay queue, unchanged. Returns the bucket used.
pub(crate) async fn publish_hop(
    delays: &DelayQueues,
    publisher: &Publisher,
    queue: &str,
    message_id: &str,
    body: &[u8],
    original: &BasicProperties,
    eta: u64,
) -> Result<Duration, Error> {
    let properties = republished_properties(original, std::iter::empty());
    publish_delayed(delays, publisher, queue, message_id, body, properties, eta).await
}

/// The properties of the retry of a failed attempt: attempt `attempt`, due at
/// `eta` (ms since the epoch), with the last error in `x-eda-error`.
fn retry_properties(
    original: &BasicProperties,
    attempt: u32,
    eta: u64,
    error: &str,
) -> BasicProperties {
    republished_properties(
        original,
        [
            (HEADER_ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
            (HEADER_ETA, AMQPValue::LongLongInt(millis_i64(eta))),
            (HEADER_ERROR, AMQPValue::LongString(LongString::from(error))),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Envelope, header_text};

    #[test]
    fn retries_count_up_carry_the_due_time_and_the_error() {
        let original = Envelope::sample()
            .into_properties()
            .unwrap()
            .with_expiration("5000".into());
        let retry = retry_properties(&original, 1, 42_000, "boom");
        let read = Envelope::from_properties(&retry);
        assert_eq!((read.attempt, read.eta), (1, Some(42_000)));
        assert_eq!(read.message_id, "7f1c", "the id is stable across retries");
        assert_eq!(header_text(&retry, HEADER_ERROR).as_deref(), Some("boom"));
        assert_eq!(*retry.expiration(), None);
    }
}
