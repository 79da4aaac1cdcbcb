use eda_worker::prelude::*;
use eda_worker::{Binding, ExchangeKind, Subscription};

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.cancelled", name = "cancelled:v2")]
pub struct OrderCancelled {
    pub order_id: i64,
}

/// Two subscribers of one queue, dispatched by type.
#[job(queue = "inventory", on = OrderPlaced, retries = 5)]
pub async fn reserve(_ctx: JobContext, _event: OrderPlaced) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "inventory", on = OrderCancelled)]
pub async fn release(_ctx: JobContext, _event: OrderCancelled) -> Result<(), JobError> {
    Ok(())
}

/// Raw bindings, repeated; `amq.topic` may be bound to.
#[job(queue = "audit", bind = "orders:order.#", bind = "amq.topic:payment.*")]
pub async fn audit(ctx: JobContext, _event: serde_json::Value) -> Result<(), JobError> {
    let _ = (ctx.routing_key(), ctx.message_type());
    Ok(())
}

fn main() {
    assert_eq!(<reserve as Job>::NAME, "order.placed");
    assert_eq!(<release as Job>::NAME, "cancelled:v2");
    assert_eq!(
        <reserve as Job>::SUBSCRIPTION,
        Subscription::Event(Binding {
            exchange: "orders",
            kind: Some(ExchangeKind::Topic),
            routing_key: "order.placed",
        })
    );
    assert_eq!(
        <audit as Job>::SUBSCRIPTION.bindings(),
        [
            Binding::raw("orders", "order.#"),
            Binding::raw("amq.topic", "payment.*"),
        ]
    );
    assert_eq!(<audit as Job>::NAME, "audit");
}
