// The handle runs the body directly, with no broker, as a unit test would.
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use eda_worker::prelude::*;

static LAST_USER: AtomicI64 = AtomicI64::new(0);

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email", retries = 7, timeout = "45s")]
pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
    assert_eq!(ctx.attempt(), 0);
    LAST_USER.store(args.user_id, Ordering::SeqCst);
    Ok(())
}

fn main() {
    assert_eq!(<send_welcome as Job>::NAME, "send_welcome");
    assert_eq!(<send_welcome as Job>::QUEUE, "email");
    assert_eq!(<send_welcome as Job>::RETRIES, 7);
    assert_eq!(<send_welcome as Job>::TIMEOUT, Duration::from_secs(45));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let args = Welcome { user_id: 42 };
    runtime
        .block_on(send_welcome.call(JobContext::for_test(), args))
        .unwrap();
    assert_eq!(LAST_USER.load(Ordering::SeqCst), 42);
}
