use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
pub struct OrderPlaced {
    pub order_id: i64,
}

fn main() {}
