use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email")]
pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

#[allow(dead_code)]
async fn web_handler(client: Client) {
    let _ = client.enqueue(send_welcome, 42u32).await;
}

fn main() {}
