//! Dead letters: a message that cannot be handled goes to `<queue>.dlq`,
//! body unchanged, with why, when and from where in its headers.

use lapin::BasicProperties;

use crate::Error;
use crate::broker::Publisher;
use crate::wire::{DeadLetterReason, dead_letter_properties, dead_letter_queue, now_millis};

/// Publishes a copy of a failed message to the dead-letter queue of `queue`
/// and waits for the broker's confirm. Only after this returns `Ok` may the
/// original be acked.
pub(crate) async fn publish_dead_letter(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    original: &BasicProperties,
    error: &str,
    attempt: u32,
) -> Result<(), Error> {
    let reason = DeadLetterReason {
        error,
        queue,
        attempt,
        failed_at: now_millis(),
    };
    let message_id = original
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let properties = dead_letter_properties(original, &reason);
    publisher
        .publish("", &dead_letter_queue(queue), &message_id, body, properties)
        .await
}
