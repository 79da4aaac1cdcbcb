// Queue names that resemble a dead-letter or delay queue without being one
// (`<queue>.dlq`, `<queue>.delay.<ttl>`) are accepted.
use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email.dlq-audit")]
pub async fn audit_dead_letters(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "email.delayed")]
pub async fn send_later(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "email.delay.5days")]
pub async fn send_next_week(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    assert_eq!(<audit_dead_letters as Job>::QUEUE, "email.dlq-audit");
    assert_eq!(<send_later as Job>::QUEUE, "email.delayed");
    assert_eq!(<send_next_week as Job>::QUEUE, "email.delay.5days");
}
