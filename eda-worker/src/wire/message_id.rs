//! [`MessageId`]: the ids eda-worker gives its messages, compact on the wire
//! and carrying their enqueue time.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// Characters of a message id in its compact form.
const COMPACT_LEN: usize = 22;

/// A message id eda-worker made: a UUID, written on the wire as 22
/// characters of base64url (RFC 4648, section 5, unpadded) rather than the
/// 36 of its hyphenated form, so that a first delivery's properties stay
/// small.
///
/// A new id is a UUIDv7, whose first 48 bits are the time it was made in
/// milliseconds: the worker reads a message's enqueue time from its id,
/// without a header. Follow-up jobs that need an id that is the same on
/// every attempt get a UUIDv5 instead.
///
/// `to_string()` gives the wire form, the text `JobContext::message_id`
/// returns in the handler. Messages from other producers may carry any
/// text as their id; [`MessageId::parse`] reads the ids that are UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new id: a UUIDv7 of now.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Reads a message id in its compact form (22 characters of base64url)
    /// or as a hyphenated UUID; `None` for any other text (a foreign
    /// producer's id that is not a UUID).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() == COMPACT_LEN {
            let mut bytes = [0u8; 16];
            let decoded = URL_SAFE_NO_PAD
                .decode_slice(text.as_bytes(), &mut bytes)
                .ok()?;
            return (decoded == bytes.len()).then(|| MessageId(Uuid::from_bytes(bytes)));
        }
        Uuid::try_parse(text).ok().map(MessageId)
    }

    /// When the id was made, for a UUIDv7 (an id eda-worker made for a new
    /// message); `None` for any other UUID.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.created_at_ms()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// [`MessageId::created_at`] in milliseconds since the Unix epoch.
    pub(crate) fn created_at_ms(&self) -> Option<u64> {
        if self.0.get_version_num() != 7 {
            return None;
        }
        let (seconds, nanos) = self.0.get_timestamp()?.to_unix();
        Some(seconds * 1000 + u64::from(nanos / 1_000_000))
    }
}

/// A new id, as [`MessageId::new`].
impl Default for MessageId {
    fn default() -> Self {
        MessageId::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        MessageId(uuid)
    }
}

impl From<MessageId> for Uuid {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

/// The compact wire form.
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; COMPACT_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(self.0.as_bytes(), &mut text)
            .map_err(|_| fmt::Error)?;
        let text = std::str::from_utf8(&text[..written]).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

impl FromStr for MessageId {
    type Err = crate::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MessageId::parse(text).ok_or_else(|| {
            crate::Error::Config(format!(
                "`{text}` is not a message id (22 characters of base64url, or a UUID)"
            ))
        })
    }
}

impl PartialEq<str> for MessageId {
    fn eq(&self, other: &str) -> bool {
        MessageId::parse(other) == Some(*self)
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_form_is_22_url_safe_characters_and_reads_back() {
        for _ in 0..100 {
            let id = MessageId::new();
            let text = id.to_string();
            assert_eq!(text.len(), 22);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{text}"
            );
            assert_eq!(MessageId::parse(&text), Some(id));
            assert_eq!(MessageId::parse(&id.as_uuid().to_string()), Some(id));
            assert!(id == text.as_str());
        }
    }

    #[test]
    fn a_v7_ids_time_round_trips_to_the_millisecond() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis();
        let id = MessageId::new();
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis();
        let made = u128::from(
            MessageId::parse(&id.to_string())
                .and_then(|id| id.created_at_ms())
                .expect("a v7 id has a time"),
        );
        assert!(
            (before..=after).contains(&made),
            "{before} <= {made} <= {after}"
        );
        let fixed = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_700_000_000,
            123_000_000,
        ));
        assert_eq!(
            MessageId::from(fixed).created_at_ms(),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn other_ids_have_no_time_and_foreign_text_is_no_id() {
        assert_eq!(MessageId::from(Uuid::new_v4()).created_at(), None);
        assert_eq!(
            MessageId::from(Uuid::new_v5(&Uuid::NAMESPACE_OID, b"x")).created_at(),
            None
        );
        assert_eq!(MessageId::parse("order-42"), None);
        assert_eq!(MessageId::parse("not base64 at all ~~~!"), None);
        assert_eq!(MessageId::parse(""), None);
    }
}
