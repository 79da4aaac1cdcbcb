// With only an option wrong, the handle is still generated: uses of the job
// elsewhere report nothing more than the option's own error.
use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email", retries = -1)]
pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

#[allow(dead_code)]
async fn web_handler(client: Client) {
    let _ = client.enqueue(send_welcome, Welcome { user_id: 1 }).await;
}

fn main() {
    let _ = <send_welcome as Job>::NAME;
}
