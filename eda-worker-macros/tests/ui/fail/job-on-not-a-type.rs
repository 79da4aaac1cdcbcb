use eda_worker::prelude::*;

#[job(queue = "inventory", on = "OrderPlaced")]
pub async fn reserve(_ctx: JobContext, _event: i64) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
