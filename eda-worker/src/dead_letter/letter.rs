//! What a dead letter says (read from its properties), and the properties of
//! its replay. Pure functions, no I/O.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use crate::wire::{
    Envelope, HEADER_ATTEMPT, HEADER_ERROR, HEADER_ETA, HEADER_FAILED_AT, HEADER_QUEUE,
    copy_properties, header_text, header_u64, is_routing_or_broker_header,
};

/// The broker's dead-lettering record (a list, latest first).
const X_DEATH: &str = "x-death";

/// One message of a dead-letter queue, as `worker dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message id (stable across retries and replays; empty when the
    /// producer set none).
    pub message_id: String,
    /// The job's wire name (the `type` property).
    pub job: Option<String>,
    /// The attempt that failed (`x-eda-attempt`, 0 for the first).
    pub attempt: u32,
    /// When it failed, in ms since the Unix epoch (`x-eda-failed-at`, or the
    /// time of the broker's dead-lettering).
    pub failed_at_ms: Option<u64>,
    /// Why it failed (`x-eda-error`, or what the broker's `x-death` says when
    /// the broker dead-lettered it, e.g. on a delivery limit).
    pub error: Option<String>,
    /// The job queue it came from (`x-eda-queue`, or the queue in `x-death`).
    pub source_queue: Option<String>,
    /// The correlation id of the request that caused the job.
    pub correlation_id: Option<String>,
    /// The body as text (invalid UTF-8 replaced), for display.
    pub body: String,
    /// The body's size in bytes.
    pub size: usize,
}

impl DeadLetter {
    /// Reads a dead letter from a message of a dead-letter queue.
    pub(crate) fn from_message(properties: &BasicProperties, body: &[u8]) -> Self {
        let envelope = Envelope::from_properties(properties);
        let correlation_id = envelope.correlation_id().map(str::to_owned);
        let death = BrokerDeath::latest(properties);
        DeadLetter {
            message_id: envelope.message_id,
            job: envelope.job,
            attempt: envelope.attempt,
            failed_at_ms: header_u64(properties, HEADER_FAILED_AT).or_else(|| {
                death
                    .as_ref()
                    .and_then(|death| death.time_secs)
                    .map(|secs| secs.saturating_mul(1000))
            }),
            // eda-worker's own dead letters carry x-eda-failed-at; without it, an
            // x-eda-error is a retry's (the last failure before the broker itself
            // dead-lettered the message, e.g. at a delivery limit), and the
            // broker's reason is the one that explains the dead letter.
            error: header_u64(properties, HEADER_FAILED_AT)
                .and_then(|_| header_text(properties, HEADER_ERROR))
                .or_else(|| death.as_ref().map(BrokerDeath::describe))
                .or_else(|| header_text(properties, HEADER_ERROR)),
            source_queue: header_text(properties, HEADER_QUEUE)
                .or_else(|| death.and_then(|death| death.queue)),
            correlation_id,
            body: String::from_utf8_lossy(body).into_owned(),
            size: body.len(),
        }
    }
}

/// Why and where the broker itself dead-lettered a message (a quorum
/// queue's delivery limit, a max-length policy, an expired TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerDeath {
    reason: Option<String>,
    queue: Option<String>,
    time_secs: Option<u64>,
}

impl BrokerDeath {
    /// The latest dead-lettering: the first `x-death` entry, or the
    /// `x-last-death-*` headers when there is no `x-death`.
    fn latest(properties: &BasicProperties) -> Option<Self> {
        let headers = properties.headers().as_ref()?;
        if let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(X_DEATH)
            && let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first()
        {
            return Some(BrokerDeath {
                reason: field_text(death, "reason"),
                queue: field_text(death, "queue"),
                time_secs: match death.inner().get("time") {
                    Some(AMQPValue::Timestamp(secs)) => Some(*secs),
                    _ => None,
                },
            });
        }
        let reason = field_text(headers, "x-last-death-reason");
        let queue = field_text(headers, "x-last-death-queue");
        (reason.is_some() || queue.is_some()).then_some(BrokerDeath {
            reason,
            queue,
            time_secs: None,
        })
    }

    fn describe(&self) -> String {
        let reason = self.reason.as_deref().unwrap_or("unknown reason");
        match &self.queue {
            Some(queue) => format!("dead-lettered by the broker: {reason} in queue `{queue}`"),
            None => format!("dead-lettered by the broker: {reason}"),
        }
    }
}

fn field_text(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// Headers that describe the message's failure or its path through the
/// broker, not the job: a replay starts without them.
fn is_history_header(name: &str) -> bool {
    matches!(
        name,
        HEADER_ERROR | HEADER_FAILED_AT | HEADER_QUEUE | HEADER_ETA | HEADER_ATTEMPT
    ) || is_routing_or_broker_header(name)
}

/// The properties of a dead letter's replay: the dead letter's own (same
/// message id, job, correlation id, timestamp), without its failure history,
/// persistent, with `x-eda-attempt` 0. See [`copy_properties`] for what else
/// is left out.
pub(crate) fn replay_properties(dead: &BasicProperties) -> BasicProperties {
    copy_properties(
        dead,
        is_history_header,
        [(HEADER_ATTEMPT, AMQPValue::LongLongInt(0))],
    )
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;
    use crate::dead_letter::publish::{DeadLetterReason, dead_letter_properties};

    fn job_properties() -> BasicProperties {
        Envelope::sample().into_properties().unwrap()
    }

    fn eda_dead_letter() -> BasicProperties {
        dead_letter_properties(&job_properties(), &DeadLetterReason::sample())
    }

    /// What RabbitMQ adds when it dead-letters a message itself.
    fn with_broker_death(properties: BasicProperties, reason: &str) -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString(reason.into()));
        death.insert("queue".into(), AMQPValue::LongString("email".into()));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_001));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut older = FieldTable::default();
        older.insert("reason".into(), AMQPValue::LongString("expired".into()));
        older.insert(
            "queue".into(),
            AMQPValue::LongString("email.delay-1s".into()),
        );
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(death),
                AMQPValue::FieldTable(older),
            ])),
        );
        headers.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("email.delay-1s".into()),
        );
        headers.insert(
            "x-last-death-reason".into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        properties.with_headers(headers)
    }

    #[test]
    fn an_eda_dead_letter_reads_back_its_job_and_reason() {
        let letter = DeadLetter::from_message(&eda_dead_letter(), br#"{"user_id":7}"#);
        assert_eq!(
            letter,
            DeadLetter {
                message_id: "7f1c".into(),
                job: Some("send_welcome".into()),
                attempt: 3,
                failed_at_ms: Some(1_700_000_000_123),
                error: Some("smtp server said no".into()),
                source_queue: Some("email".into()),
                correlation_id: Some("req-1".into()),
                body: r#"{"user_id":7}"#.into(),
                size: 13,
            }
        );
    }

    #[test]
    fn a_broker_dead_letter_is_explained_by_its_latest_death() {
        let properties = with_broker_death(job_properties(), "delivery_limit");
        let letter = DeadLetter::from_message(&properties, b"{}");
        assert_eq!(
            letter.error.as_deref(),
            Some("dead-lettered by the broker: delivery_limit in queue `email`")
        );
        assert_eq!(letter.source_queue.as_deref(), Some("email"));
        assert_eq!(letter.failed_at_ms, Some(1_700_000_001_000));
    }

    #[test]
    fn without_x_death_the_last_death_headers_explain_it() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-last-death-reason".into(),
            AMQPValue::LongString("maxlen".into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        let letter = DeadLetter::from_message(&properties, b"");
        assert_eq!(
            letter.error.as_deref(),
            Some("dead-lettered by the broker: maxlen")
        );
        assert_eq!(letter.source_queue, None);
    }

    #[test]
    fn the_eda_reason_wins_over_the_brokers() {
        let properties = with_broker_death(eda_dead_letter(), "expired");
        let letter = DeadLetter::from_message(&properties, b"{}");
        assert_eq!(letter.error.as_deref(), Some("smtp server said no"));
        assert_eq!(letter.failed_at_ms, Some(1_700_000_000_123));
    }

    #[test]
    fn a_foreign_message_reads_as_mostly_unknown_with_its_body_kept_for_display() {
        let letter = DeadLetter::from_message(&BasicProperties::default(), b"\xffbad");
        assert_eq!(letter.message_id, "");
        assert_eq!(letter.job, None);
        assert_eq!(letter.attempt, 0);
        assert_eq!(letter.error, None);
        assert_eq!(letter.body, "\u{fffd}bad");
        assert_eq!(letter.size, 4);
    }

    #[test]
    fn a_replay_is_a_first_attempt_without_failure_history() {
        let mut headers = with_broker_death(eda_dead_letter(), "delivery_limit")
            .headers()
            .clone()
            .unwrap_or_default();
        headers.insert(HEADER_ETA.into(), AMQPValue::LongLongInt(1));
        headers.insert("CC".into(), AMQPValue::LongString("elsewhere".into()));
        headers.insert(
            "x-tenant".into(),
            AMQPValue::LongString(LongString::from("acme")),
        );
        let dead = eda_dead_letter()
            .with_headers(headers)
            .with_expiration("1000".into())
            .with_user_id("someone-else".into());

        let replay = replay_properties(&dead);
        let names: Vec<&str> = replay
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(lapin::types::ShortString::as_str)
            .collect();
        assert_eq!(names, [HEADER_ATTEMPT, "x-tenant"]);
        assert_eq!(
            replay
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .get(HEADER_ATTEMPT),
            Some(&AMQPValue::LongLongInt(0))
        );
        assert_eq!(*replay.expiration(), None);
        assert_eq!(*replay.user_id(), None);
        assert_eq!(*replay.delivery_mode(), Some(2));
    }

    #[test]
    fn a_replay_keeps_the_jobs_identity() {
        let dead = eda_dead_letter();
        let replay = replay_properties(&dead);
        assert_eq!(replay.message_id(), dead.message_id());
        assert_eq!(replay.correlation_id(), dead.correlation_id());
        assert_eq!(replay.kind(), dead.kind());
        assert_eq!(replay.content_type(), dead.content_type());
        assert_eq!(replay.timestamp(), dead.timestamp());
        assert_eq!(Envelope::from_properties(&replay).attempt, 0);
    }
}
