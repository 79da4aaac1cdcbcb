use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.placed")]
pub struct Placed<T> {
    pub item: T,
}

fn main() {}
