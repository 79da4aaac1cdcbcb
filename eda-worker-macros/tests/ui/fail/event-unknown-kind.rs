use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", kind = "headers", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

fn main() {}
