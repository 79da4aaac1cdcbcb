use eda_worker::prelude::*;

#[derive(Serialize, Deserialize, Event)]
#[event(exchange = "orders", routing_key = "order.placed")]
pub struct OrderPlaced {
    pub order_id: i64,
}

#[job(queue = "inventory", on = OrderPlaced, bind = "orders:order.#")]
pub async fn reserve(_ctx: JobContext, _event: OrderPlaced) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
