use eda_worker::prelude::*;
use eda_worker::ExchangeKind;

/// A topic event: the default kind, its wire name its routing key.
#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "notes", kind = "fanout", name = "note.posted")]
pub struct NotePosted(String);

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "billing", kind = "direct", routing_key = "invoice.paid", name = "invoice:v2")]
pub enum InvoicePaid {
    Card { cents: i64 },
    Transfer,
}

fn main() {
    assert_eq!(<OrderPlaced as Event>::EXCHANGE, "orders");
    assert_eq!(<OrderPlaced as Event>::KIND, ExchangeKind::Topic);
    assert_eq!(<OrderPlaced as Event>::ROUTING_KEY, "order.placed");
    assert_eq!(<OrderPlaced as Event>::NAME, "order.placed");
    assert_eq!(<NotePosted as Event>::KIND, ExchangeKind::Fanout);
    assert_eq!(<NotePosted as Event>::ROUTING_KEY, "");
    assert_eq!(<NotePosted as Event>::NAME, "note.posted");
    assert_eq!(<InvoicePaid as Event>::KIND, ExchangeKind::Direct);
    assert_eq!(<InvoicePaid as Event>::NAME, "invoice:v2");
}
