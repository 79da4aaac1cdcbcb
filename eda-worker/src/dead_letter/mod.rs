//! Dead letters: a message that cannot be handled goes to `<queue>.dlq`, body
//! unchanged, with why, when and from where in its headers (`publish`); and
//! the tooling behind `worker dlq list|replay|purge`, as a library so that an
//! app can offer it from its own admin endpoint ([`DeadLetters`]).
//!
//! Every function takes the *job* queue's name; its dead letters live in
//! [`queue_name`]`(queue)`.
//!
//! ```no_run
//! use eda_worker::dead_letter::{DeadLetters, Replay};
//!
//! # async fn admin() -> Result<(), eda_worker::Error> {
//! let dead_letters = DeadLetters::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! for letter in dead_letters.list("email", 20).await? {
//!     println!("{} {:?} failed: {:?}", letter.message_id, letter.job, letter.error);
//! }
//! // Once the bug is fixed: run them all again, as first attempts.
//! let replayed = dead_letters.replay("email", Replay::All).await?;
//! println!("replayed {replayed} jobs");
//! dead_letters.close().await?;
//! # Ok(()) }
//! ```

mod admin;
mod letter;
mod publish;

pub use admin::{DeadLetters, Replay};
pub use letter::DeadLetter;
pub(crate) use publish::publish_dead_letter;

/// What a dead-letter queue's name adds to its job queue's.
pub const SUFFIX: &str = ".dlq";

/// The dead-letter queue of job queue `queue`: `<queue>.dlq`.
///
/// ```
/// assert_eq!(eda_worker::dead_letter::queue_name("email"), "email.dlq");
/// ```
pub fn queue_name(queue: &str) -> String {
    format!("{queue}{SUFFIX}")
}
