//! The wire format: which properties and headers a job message carries.
//!
//! One message is one job attempt. The body is the arguments as JSON; the
//! properties say which job (`type`), which message (`message_id`, stable
//! across retries) and which request caused it (`correlation_id`).

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::Error;

mod message_id;

pub use message_id::MessageId;

/// Header: 0 on the first delivery, n on the n-th retry.
pub const HEADER_ATTEMPT: &str = "x-eda-attempt";
/// Header: when the job is due, in milliseconds since the Unix epoch.
pub const HEADER_ETA: &str = "x-eda-eta";
/// Header on dead letters: why the message could not be handled.
pub const HEADER_ERROR: &str = "x-eda-error";
/// Header on dead letters: when it failed, in milliseconds since the Unix epoch.
pub const HEADER_FAILED_AT: &str = "x-eda-failed-at";
/// Header on dead letters: the queue the message came from.
pub const HEADER_QUEUE: &str = "x-eda-queue";
/// Header on a request: when its caller gives up, in ms since the epoch;
/// past it, the request is acked without running.
pub const HEADER_DEADLINE: &str = "x-eda-deadline";
/// Header on a reply: the `message_id` of the request it answers.
pub const HEADER_REQUEST_ID: &str = "x-eda-request-id";
/// Header on a failed reply: `permanent`, `retryable` or `duplicate`.
pub const HEADER_ERROR_KIND: &str = "x-eda-error-kind";

/// The `content_type` a job message may carry (absent means the same).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// What a message body carries, for errors: a job's arguments or an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The arguments of the job with this wire name.
    Job(&'static str),
    /// The event with this wire name.
    Event(&'static str),
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Job(name) => write!(f, "the arguments of job `{name}`"),
            Payload::Event(name) => write!(f, "event `{name}`"),
        }
    }
}

/// `value` as a JSON body of at most `limit` bytes.
pub(crate) fn json_body<T: serde::Serialize>(
    value: &T,
    payload: Payload,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let body = serde_json::to_vec(value).map_err(|source| Error::Serialize { payload, source })?;
    if body.len() > limit {
        return Err(Error::MessageTooLarge {
            payload,
            size: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Builds a short string from text a caller controls, refusing what AMQP cannot carry.
pub(crate) fn short_string(
    what: &'static str,
    value: impl Into<String>,
) -> Result<ShortString, Error> {
    let value = value.into();
    let len = value.len();
    ShortString::try_new(value).map_err(|_| Error::TooLong { what, len })
}

/// What identifies one job message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The message id, stable across retries.
    pub(crate) message_id: String,
    /// The request that caused this job, carried into every job it causes,
    /// as the wire has it: `None` means the message id (see
    /// [`Envelope::correlation_id`]).
    pub(crate) correlation_id: Option<String>,
    /// The job's wire name (the `type` property).
    pub(crate) job: Option<String>,
    /// 0 on the first delivery.
    pub(crate) attempt: u32,
    /// When the job is due (ms since the epoch), for delayed messages.
    pub(crate) eta: Option<u64>,
}

impl Envelope {
    /// The properties of a message carrying this envelope, sent now.
    ///
    /// A first delivery is lean: no `content_type` (absent means JSON), no
    /// header table (absent `x-eda-attempt` means 0), no `correlation_id`
    /// when it is the message id, and no `timestamp` when the id is a
    /// UUIDv7, which holds the time already. Its properties then take at
    /// most 64 bytes for wire names up to 20 characters, the size up to
    /// which the broker handles them as cheaply as a bare message's.
    pub(crate) fn into_properties(self) -> Result<BasicProperties, Error> {
        let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        let mut headers = FieldTable::default();
        if self.attempt > 0 {
            headers.insert(
                HEADER_ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(self.attempt)),
            );
        }
        if let Some(eta) = self.eta {
            headers.insert(HEADER_ETA.into(), AMQPValue::LongLongInt(millis_i64(eta)));
        }
        if !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let id_has_time = MessageId::parse(&self.message_id)
            .and_then(|id| id.created_at_ms())
            .is_some();
        if !id_has_time {
            properties = properties.with_timestamp(now_millis() / 1000);
        }
        if let Some(job) = self.job {
            properties = properties.with_type(short_string("job name", job)?);
        }
        if let Some(correlation_id) = self.correlation_id
            && correlation_id != self.message_id
        {
            properties =
                properties.with_correlation_id(short_string("correlation id", correlation_id)?);
        }
        Ok(properties.with_message_id(short_string("message id", self.message_id)?))
    }

    /// The correlation id: the one on the wire, else the message id (a
    /// message without either has none).
    pub(crate) fn correlation_id(&self) -> Option<&str> {
        correlation_or_message_id(self.correlation_id.as_deref(), &self.message_id)
    }

    /// Reads the envelope of a received message. A message without an id
    /// (published by something other than eda-worker) gets an empty one.
    pub(crate) fn from_properties(properties: &BasicProperties) -> Self {
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        Envelope {
            message_id,
            correlation_id: properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            job: properties
                .kind()
                .as_ref()
                .map(|kind| kind.as_str().to_owned()),
            // An attempt count past u32 saturates: it must not restart the retries.
            attempt: header_u64(properties, HEADER_ATTEMPT)
                .map_or(0, |attempt| u32::try_from(attempt).unwrap_or(u32::MAX)),
            eta: header_u64(properties, HEADER_ETA),
        }
    }
}

/// A message's correlation id: `correlation_id` when it has one, else its
/// message id (absent, or empty, when it has neither).
pub(crate) fn correlation_or_message_id<'a>(
    correlation_id: Option<&'a str>,
    message_id: &'a str,
) -> Option<&'a str> {
    correlation_id.or_else(|| Some(message_id).filter(|id| !id.is_empty()))
}

/// When a message was enqueued, in ms since the epoch: from its id when
/// that is a UUIDv7 (eda-worker's own), else from its `timestamp` property
/// (seconds); `None` when it has neither.
pub(crate) fn enqueued_at_ms(message_id: &str, timestamp: Option<u64>) -> Option<u64> {
    MessageId::parse(message_id)
        .and_then(|id| id.created_at_ms())
        .or_else(|| timestamp.map(|seconds| seconds.saturating_mul(1000)))
}

/// Reads an integer header, whatever integer type the publisher chose.
pub fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongString(v) => std::str::from_utf8(v.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(v) => v.as_str().parse().ok(),
        _ => None,
    }
}

/// The `x-eda-eta` header as the publisher wrote it, when it is there but
/// is not a time in ms since the epoch (text, a negative number, a table).
pub(crate) fn unparsable_eta(properties: &BasicProperties) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(HEADER_ETA)?;
    match header_u64(properties, HEADER_ETA) {
        Some(_) => None,
        None => Some(match value {
            AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
            AMQPValue::ShortString(text) => text.as_str().to_owned(),
            other => format!("{other:?}"),
        }),
    }
}

/// Reads a text header.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// Headers the broker adds when it dead-letters a message (from a delay
/// queue, say). They grow with every hop and say nothing eda-worker needs, so
/// a message eda-worker publishes again leaves them behind.
fn is_broker_death_header(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// The properties of a copy of `original` that eda-worker publishes again (a
/// retry, a hop, a dead letter): the same id, type, correlation and headers,
/// persistent, with `headers` set on top.
///
/// Left out: `expiration` (a per-message TTL would cut a delay short or let a
/// dead letter expire), `user_id` (the broker refuses a publish whose user_id
/// is not the publishing connection's user), `CC`/`BCC` (they would route the
/// copy into other queues, the source one too), and the broker's `x-death`
/// headers.
pub(crate) fn republished_properties(
    original: &BasicProperties,
    headers: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    copy_properties(original, is_routing_or_broker_header, headers)
}

/// Headers a copy never carries: `CC`/`BCC` route to more queues, the rest
/// is the broker's record of this copy's path (`x-death`, a quorum queue's
/// `x-delivery-count`).
pub(crate) fn is_routing_or_broker_header(name: &str) -> bool {
    matches!(name, "CC" | "BCC" | "x-delivery-count") || is_broker_death_header(name)
}

/// A persistent copy of `original`'s properties without `expiration` and
/// `user_id`, without the headers `drop` names, and with `set` on top.
pub(crate) fn copy_properties(
    original: &BasicProperties,
    drop: impl Fn(&str) -> bool,
    set: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    let mut table: FieldTable = original
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(name, _)| !drop(name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    for (name, value) in set {
        table.insert(name.into(), value);
    }
    let mut copy = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table);
    // Each property the copy keeps, when the original has it.
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {$(
            if let Some(value) = original.$get().clone() {
                copy = copy.$set(value);
            }
        )*};
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        message_id => with_message_id,
        correlation_id => with_correlation_id,
        kind => with_type,
        reply_to => with_reply_to,
        app_id => with_app_id,
        timestamp => with_timestamp,
        priority => with_priority,
    );
    copy
}

#[cfg(test)]
impl Envelope {
    /// A first attempt of job `send_welcome`, for tests.
    pub(crate) fn sample() -> Self {
        Envelope {
            message_id: "7f1c".into(),
            correlation_id: Some("req-1".into()),
            job: Some("send_welcome".into()),
            attempt: 0,
            eta: None,
        }
    }
}

/// Milliseconds as an AMQP long-long, saturating.
pub(crate) fn millis_i64(millis: u64) -> i64 {
    i64::try_from(millis).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            attempt: 2,
            eta: Some(1_700_000_000_123),
            ..Envelope::sample()
        }
    }

    /// A first delivery of job `name`, as `Client::enqueue` writes it.
    fn first_delivery(name: &str) -> BasicProperties {
        Envelope {
            message_id: MessageId::new().to_string(),
            correlation_id: None,
            job: Some(name.to_owned()),
            attempt: 0,
            eta: None,
        }
        .into_properties()
        .unwrap()
    }

    /// The bytes `properties` take in a content header, as lapin encodes
    /// them (the property flags and the properties set).
    fn encoded_size(properties: &BasicProperties) -> usize {
        let written = lapin::protocol::basic::gen_properties(properties)(
            cookie_factory::WriteContext::from(Vec::new()),
        )
        .unwrap();
        written.write.len()
    }

    #[test]
    fn a_first_delivery_is_lean_and_fits_64_bytes_for_names_up_to_20_characters() {
        for (len, size) in [(1, 28), (20, 47), (21, 48)] {
            let properties = first_delivery(&"j".repeat(len));
            assert_eq!(encoded_size(&properties), size, "a {len}-character name");
            assert!(properties.headers().is_none());
            assert!(properties.content_type().is_none());
            assert!(properties.correlation_id().is_none());
            assert!(properties.timestamp().is_none(), "the v7 id holds the time");
            assert_eq!(*properties.delivery_mode(), Some(2));
        }
        assert!(encoded_size(&first_delivery(&"j".repeat(20))) <= 64);
    }

    #[test]
    fn absent_fields_read_back_as_their_defaults() {
        let properties = first_delivery("send_welcome");
        let read = Envelope::from_properties(&properties);
        let id = properties.message_id().as_ref().unwrap().as_str();
        assert_eq!(read.message_id, id);
        assert_eq!(read.correlation_id, None, "as the wire has it");
        assert_eq!(
            read.correlation_id(),
            Some(id),
            "absent means the message id"
        );
        assert_eq!(read.attempt, 0, "absent means the first attempt");
        assert_eq!(read.eta, None);
        let enqueued = enqueued_at_ms(id, *properties.timestamp()).expect("from the id");
        assert!(now_millis().abs_diff(enqueued) < 60_000);
    }

    #[test]
    fn an_id_without_a_time_carries_a_timestamp_and_a_retry_carries_its_headers() {
        let properties = envelope().into_properties().unwrap();
        assert!(properties.content_type().is_none());
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(properties.kind().as_ref().unwrap().as_str(), "send_welcome");
        assert_eq!(
            properties.correlation_id().as_ref().unwrap().as_str(),
            "req-1"
        );
        let timestamp = properties.timestamp().expect("the id `7f1c` holds no time");
        assert_eq!(
            enqueued_at_ms("7f1c", Some(timestamp)),
            Some(timestamp * 1000)
        );
        assert_eq!(header_u64(&properties, HEADER_ATTEMPT), Some(2));
        assert_eq!(header_u64(&properties, HEADER_ETA), Some(1_700_000_000_123));
    }

    #[test]
    fn envelope_round_trips_through_properties() {
        let properties = envelope().into_properties().unwrap();
        assert_eq!(Envelope::from_properties(&properties), envelope());
    }

    #[test]
    fn the_old_full_format_reads_as_before() {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
        let id = uuid::Uuid::new_v4().to_string();
        let full = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(id.as_str().into())
            .with_correlation_id(id.as_str().into())
            .with_type("send_welcome".into())
            .with_timestamp(1_700_000_000)
            .with_headers(headers);
        let read = Envelope::from_properties(&full);
        assert_eq!(read.message_id, id);
        assert_eq!(read.correlation_id(), Some(id.as_str()));
        assert_eq!(read.job.as_deref(), Some("send_welcome"));
        assert_eq!(read.attempt, 0);
        assert_eq!(
            enqueued_at_ms(&id, *full.timestamp()),
            Some(1_700_000_000_000)
        );
    }

    #[test]
    fn foreign_messages_read_as_first_attempt_without_type() {
        let read = Envelope::from_properties(&BasicProperties::default());
        assert_eq!(read.attempt, 0);
        assert_eq!(read.job, None);
        assert_eq!(read.message_id, "");
    }

    #[test]
    fn an_unparsable_due_time_is_reported_as_written() {
        let with_eta = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_ETA.into(), value);
            BasicProperties::default().with_headers(headers)
        };
        let text = with_eta(AMQPValue::LongString("soon".into()));
        assert_eq!(unparsable_eta(&text).as_deref(), Some("soon"));
        assert_eq!(Envelope::from_properties(&text).eta, None);
        assert_eq!(
            unparsable_eta(&with_eta(AMQPValue::LongLongInt(-5))).as_deref(),
            Some("LongLongInt(-5)")
        );
        assert_eq!(unparsable_eta(&with_eta(AMQPValue::LongLongInt(5))), None);
        assert_eq!(unparsable_eta(&BasicProperties::default()), None);
    }

    #[test]
    fn attempt_header_accepts_any_integer_type() {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ATTEMPT.into(), AMQPValue::ShortShortUInt(4));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(Envelope::from_properties(&properties).attempt, 4);
    }

    #[test]
    fn overlong_correlation_ids_are_refused_not_panicked_on() {
        let mut envelope = envelope();
        envelope.correlation_id = Some("x".repeat(300));
        assert!(matches!(
            envelope.into_properties(),
            Err(Error::TooLong { len: 300, .. })
        ));
    }
}
