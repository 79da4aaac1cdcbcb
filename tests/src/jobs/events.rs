//! The events of the event tests: each test has exchanges of its own.

use eda_worker::prelude::*;

/// To every queue bound to a fanout exchange; its wire name is its own, as
/// it has no routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.fanout",
    kind = "fanout",
    name = "note.posted"
)]
pub struct NotePosted {
    /// The note.
    pub text: String,
}

/// To the queues bound with exactly `invoice.paid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.direct",
    kind = "direct",
    routing_key = "invoice.paid"
)]
pub struct InvoicePaid {
    /// The invoice.
    pub invoice: i64,
}

/// To the queues whose topic pattern matches `order.placed.eu`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.topic", routing_key = "order.placed.eu")]
pub struct OrderPlacedEu {
    /// The order.
    pub order: i64,
}

/// Published where no queue is bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.unrouted", routing_key = "nobody.listens")]
pub struct NobodyListens {
    /// A sequence number.
    pub n: u32,
}

/// A topic event whose exchange the test declares as a fanout one first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(exchange = "eda-test.events.kind", routing_key = "kind.clash")]
pub struct KindClash {
    /// A sequence number.
    pub n: u32,
}

/// An event whose message the test reads off its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(
    exchange = "eda-test.events.lean",
    routing_key = "lean.event",
    name = "lean:v1"
)]
pub struct LeanEvent {
    /// A sequence number.
    pub n: u32,
}
