// A job in a module, `pub(crate)`, with doc comments and other attributes:
// the handle keeps the function's visibility and docs.
mod jobs {
    use eda_worker::prelude::*;

    /// Arguments of [`send_welcome`].
    #[derive(Serialize, Deserialize)]
    pub(crate) struct Welcome {
        /// Who to greet.
        pub(crate) user_id: i64,
    }

    /// Sends the welcome email.
    ///
    /// Idempotent on the message id.
    #[job(queue = "email")]
    #[allow(clippy::unused_async)]
    pub(crate) async fn send_welcome(_ctx: JobContext, args: Welcome) -> Result<(), JobError> {
        let _ = args.user_id;
        Ok(())
    }
}

use eda_worker::prelude::*;

fn main() {
    let handle: jobs::send_welcome = jobs::send_welcome;
    let _ = handle;
    assert_eq!(<jobs::send_welcome as Job>::NAME, "send_welcome");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let args = jobs::Welcome { user_id: 1 };
    runtime
        .block_on(jobs::send_welcome.call(JobContext::for_test(), args))
        .unwrap();
}
