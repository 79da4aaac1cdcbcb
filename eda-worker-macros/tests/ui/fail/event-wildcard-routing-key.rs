use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.*")]
pub struct OrderPlaced {
    pub order_id: i64,
}

fn main() {}
