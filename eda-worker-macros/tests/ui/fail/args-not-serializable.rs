use eda_worker::prelude::*;

pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email")]
pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
