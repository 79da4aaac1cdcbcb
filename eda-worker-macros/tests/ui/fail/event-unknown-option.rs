use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

fn main() {}
