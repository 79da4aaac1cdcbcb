use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "amq.topic", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

fn main() {}
