// Every option at once; the handle carries them as `Job` consts.
use std::time::Duration;

use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(
    queue = "email.welcome",
    retries = 5,
    name = "welcome:v2",
    timeout = "1m 30s",
    backoff = "2s..5m",
    queue_type = "quorum",
    dedup = false
)]
pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
    let _ = (ctx.attempt(), args.user_id);
    Ok(())
}

// Without options besides `queue`, the defaults apply.
#[job(queue = "email")]
pub async fn send_goodbye(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

// A timeout below a millisecond is kept exactly.
#[job(queue = "email", timeout = "1500us")]
pub async fn send_ping(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> {
    Ok(())
}

fn main() {
    assert_eq!(<send_welcome as Job>::NAME, "welcome:v2");
    assert_eq!(<send_welcome as Job>::QUEUE, "email.welcome");
    assert_eq!(<send_welcome as Job>::RETRIES, 5);
    assert_eq!(<send_welcome as Job>::TIMEOUT, Duration::from_secs(90));
    assert_eq!(
        <send_welcome as Job>::BACKOFF,
        eda_worker::Backoff::new(Duration::from_secs(2), Duration::from_secs(300))
    );
    assert_eq!(<send_welcome as Job>::QUEUE_TYPE, eda_worker::QueueType::Quorum);
    assert_eq!(<send_welcome as Job>::DEDUP, Some(false));

    assert_eq!(<send_goodbye as Job>::NAME, "send_goodbye");
    assert_eq!(<send_goodbye as Job>::QUEUE, "email");
    assert_eq!(<send_goodbye as Job>::RETRIES, eda_worker::DEFAULT_RETRIES);
    assert_eq!(<send_goodbye as Job>::TIMEOUT, eda_worker::DEFAULT_TIMEOUT);
    assert_eq!(<send_goodbye as Job>::BACKOFF, eda_worker::DEFAULT_BACKOFF);
    assert_eq!(<send_goodbye as Job>::QUEUE_TYPE, eda_worker::QueueType::Classic);
    assert_eq!(<send_goodbye as Job>::DEDUP, None);

    assert_eq!(<send_ping as Job>::TIMEOUT, Duration::from_micros(1500));
}
