use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email", on = Welcome)]
pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

fn main() {}
