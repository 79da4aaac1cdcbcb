use eda_worker::prelude::*;

#[job(queue = "audit", bind = "order.#")]
pub async fn audit(_ctx: JobContext, _event: serde_json::Value) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
