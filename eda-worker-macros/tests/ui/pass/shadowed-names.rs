// Local items named like what the generated code uses: it names everything
// by absolute path, so none of them get in the way (this file itself must
// write `::eda_worker` since it declares a module of that name).
use ::eda_worker::prelude::*;

/// A crate-local result alias with one parameter, as many crates have.
type Result<T> = ::std::result::Result<T, JobError>;

#[allow(dead_code)]
struct Duration;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
trait Job {}

#[allow(dead_code)]
mod serde {}
#[allow(dead_code)]
mod inventory {}
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod std {}
#[allow(dead_code)]
mod eda_worker {}

#[derive(Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: i64,
}

#[job(queue = "email", retries = 1, timeout = "10s")]
pub async fn send_welcome(_ctx: JobContext, args: Welcome) -> Result<()> {
    let _ = args.user_id;
    Ok(())
}

fn main() {
    assert_eq!(<send_welcome as ::eda_worker::Job>::QUEUE, "email");
}
