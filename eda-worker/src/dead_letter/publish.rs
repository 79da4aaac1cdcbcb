//! Publishing a dead letter: a copy of the failed message, body unchanged,
//! with why, when and from where in its headers, confirmed before the
//! original is acked.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};

use crate::Error;
use crate::broker::Publisher;
use crate::wire::{
    HEADER_ATTEMPT, HEADER_ERROR, HEADER_FAILED_AT, HEADER_QUEUE, millis_i64, now_millis,
    republished_properties,
};

/// Why a message is dead-lettered, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterReason<'a> {
    /// The error text (already capped).
    pub(crate) error: &'a str,
    /// The job queue the message came from.
    pub(crate) queue: &'a str,
    /// The attempt that failed.
    pub(crate) attempt: u32,
    /// When it failed, ms since the epoch.
    pub(crate) failed_at: u64,
}

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
        .publish("", &super::queue_name(queue), &message_id, body, properties)
        .await
}

/// The properties of a dead letter: the original ones (so the id, type and
/// correlation survive) plus the error headers. See [`republished_properties`].
pub(crate) fn dead_letter_properties(
    original: &BasicProperties,
    reason: &DeadLetterReason<'_>,
) -> BasicProperties {
    republished_properties(
        original,
        [
            (
                HEADER_ERROR,
                AMQPValue::LongString(LongString::from(reason.error)),
            ),
            (
                HEADER_FAILED_AT,
                AMQPValue::LongLongInt(millis_i64(reason.failed_at)),
            ),
            (
                HEADER_QUEUE,
                AMQPValue::LongString(LongString::from(reason.queue)),
            ),
            (
                HEADER_ATTEMPT,
                AMQPValue::LongLongInt(i64::from(reason.attempt)),
            ),
        ],
    )
}

#[cfg(test)]
impl DeadLetterReason<'static> {
    /// Attempt 3 of a job of queue `email` that failed, for tests.
    pub(crate) fn sample() -> Self {
        DeadLetterReason {
            error: "smtp server said no",
            queue: "email",
            attempt: 3,
            failed_at: 1_700_000_000_123,
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;
    use crate::wire::{Envelope, header_text, header_u64};

    #[test]
    fn dead_letters_drop_ttl_user_and_extra_routing() {
        let mut headers = FieldTable::default();
        headers.insert("CC".into(), AMQPValue::LongString("other-queue".into()));
        headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("eda.delay.1s".into()),
        );
        let original = BasicProperties::default()
            .with_expiration("1000".into())
            .with_user_id("someone-else".into())
            .with_message_id("m-1".into())
            .with_headers(headers);
        let dead = dead_letter_properties(&original, &DeadLetterReason::sample());
        assert_eq!(*dead.expiration(), None);
        assert_eq!(*dead.user_id(), None);
        assert_eq!(
            dead.message_id().as_ref().map(ShortString::as_str),
            Some("m-1")
        );
        assert_eq!(header_text(&dead, "CC"), None);
        assert_eq!(header_text(&dead, "x-first-death-queue"), None);
        assert!(
            dead.headers()
                .as_ref()
                .unwrap()
                .inner()
                .get("x-death")
                .is_none()
        );
        assert_eq!(header_text(&dead, "x-custom").as_deref(), Some("kept"));
    }

    #[test]
    fn dead_letters_keep_identity_and_add_reason() {
        let original = Envelope::sample().into_properties().unwrap();
        let dead = dead_letter_properties(&original, &DeadLetterReason::sample());
        assert_eq!(dead.message_id(), original.message_id());
        assert_eq!(dead.kind(), original.kind());
        assert_eq!(
            header_text(&dead, HEADER_ERROR).as_deref(),
            Some("smtp server said no")
        );
        assert_eq!(header_text(&dead, HEADER_QUEUE).as_deref(), Some("email"));
        assert_eq!(header_u64(&dead, HEADER_FAILED_AT), Some(1_700_000_000_123));
        assert_eq!(header_u64(&dead, HEADER_ATTEMPT), Some(3));
    }
}
