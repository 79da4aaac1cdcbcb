use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

#[job(queue = "inventory", on = OrderPlaced)]
pub async fn reserve(_ctx: JobContext, _order_id: i64) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
