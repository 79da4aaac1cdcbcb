//! Events: typed messages published to an exchange, for every queue bound
//! to it, where a job is one message for one queue.
//!
//! ```no_run
//! use eda_worker::prelude::*;
//!
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(exchange = "orders", kind = "topic", routing_key = "order.placed")]
//! pub struct OrderPlaced {
//!     pub order_id: i64,
//!     pub total_cents: i64,
//! }
//!
//! # async fn web_handler(client: Client) -> Result<(), eda_worker::Error> {
//! let published = client.publish(OrderPlaced { order_id: 7, total_cents: 1250 }).await?;
//! if !published.routed {
//!     // Confirmed, but no queue is bound for it: nobody subscribes yet.
//! }
//! # Ok(()) }
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MessageId;

/// The kind of an event's exchange, which says how it routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// By pattern: a binding `order.*` or `order.#` takes `order.placed`.
    Topic,
    /// To every bound queue, whatever the routing key.
    Fanout,
    /// To the queues bound with exactly the routing key.
    Direct,
}

impl ExchangeKind {
    /// The kind as AMQP names it: `topic`, `fanout` or `direct`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Direct => "direct",
        }
    }

    /// The kind AMQP calls `name`.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "topic" => Some(ExchangeKind::Topic),
            "fanout" => Some(ExchangeKind::Fanout),
            "direct" => Some(ExchangeKind::Direct),
            _ => None,
        }
    }

    pub(crate) fn amqp(self) -> lapin::ExchangeKind {
        match self {
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event: what `#[derive(Event)]` implements from its
/// `#[event(exchange = "...", kind = "...", routing_key = "...", name = "...")]`.
///
/// The message has the job wire format: the body is the event as JSON, and
/// `type` is [`Event::NAME`].
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The exchange it is published to, declared (durable) by whoever
    /// publishes or subscribes first.
    const EXCHANGE: &'static str;
    /// The exchange's kind.
    const KIND: ExchangeKind = ExchangeKind::Topic;
    /// The routing key it is published with (empty for a fanout exchange
    /// that was given none).
    const ROUTING_KEY: &'static str;
    /// The wire name, the message's `type`: the routing key unless given.
    const NAME: &'static str;
}

/// What the broker did with a published event, once it confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event message's id.
    pub message_id: MessageId,
    /// Whether any queue took it. An event nobody subscribes to is not an
    /// error: it is confirmed, logged and reported here as `false`.
    pub routed: bool,
}
