#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
//! The `#[job]` attribute of [eda-worker](https://docs.rs/eda-worker).
//!
//! This crate only turns syntax into uses of `eda_worker`'s public items;
//! everything the job does at run time lives in `eda_worker`. Use it through
//! `eda_worker::prelude::*`:
//!
//! ```
//! use eda_worker::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Welcome {
//!     pub user_id: i64,
//! }
//!
//! #[job(queue = "email", retries = 3, timeout = "30s")]
//! pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
//!     Ok(())
//! }
//! # fn main() {}
//! ```

mod attr;
mod event;
mod expand;

use proc_macro::TokenStream;

/// Turns an async fn into a job: a handle of its own type named after the
/// function, which implements `eda_worker::Job` and registers itself with
/// the worker.
///
/// The function must be `async fn name(ctx: JobContext, args: Args) ->
/// Result<(), JobError>`, with `Args` serializable and deserializable. The
/// handle enqueues the job (`client.enqueue(send_welcome, args)`) and runs
/// its body directly in a unit test
/// (`send_welcome.call(JobContext::for_test(), args).await`).
///
/// ```
/// use eda_worker::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Welcome {
///     pub user_id: i64,
/// }
///
/// #[job(
///     queue = "email",
///     retries = 5,
///     name = "welcome:v2",
///     timeout = "30s",
///     backoff = "1s..5m",
///     queue_type = "quorum",
///     dedup = false,
/// )]
/// pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// # Options
///
/// Each option is written once, as `key = literal`; only `queue` is required.
///
/// | option | value | default | example |
/// |---|---|---|---|
/// | `queue` | string: the queue the job is published to and consumed from (see [Queue names](#queue-names)) | required | `queue = "email"` |
/// | `retries` | integer: retries after the first attempt | `3` | `retries = 5` |
/// | `name` | string: the wire name, the message's `type` property | the function's name | `name = "welcome:v2"` |
/// | `timeout` | string: a duration above zero (`ms`, `s`, `m`, `h`, `d`) that one attempt may run | 15 minutes | `timeout = "30s"` |
/// | `backoff` | string `"MIN..MAX"`: the delay before the first retry and the longest delay between attempts | `"5s..10m"` | `backoff = "1s..5m"` |
/// | `queue_type` | string: `"classic"` or `"quorum"` | `"classic"` | `queue_type = "quorum"` |
/// | `dedup` | bool: inbox dedup, so a message whose effects committed is not run again | on when a database is configured | `dedup = false` |
///
/// `dedup = true` requires a database (the worker refuses to start without
/// one); `dedup = false` opts out even when one is configured.
///
/// # Queue names
///
/// A queue name must
/// - use only letters, digits, `.`, `_`, `-` and `:`, and not be empty;
/// - not start with `amq.`, which RabbitMQ reserves;
/// - be at most 236 bytes long, so that the names of its delay queues fit
///   in AMQP's 255;
/// - not be the name of another job queue's dead-letter queue (`<queue>.dlq`)
///   or delay queue (`<queue>.delay.<ttl>`, with a TTL such as `100ms`,
///   `5s`, `15m` or `1h`): every job queue `email` owns `email.dlq` and
///   `email.delay.5s`, so these are refused, while `email.dlq-audit` and
///   `email.delayed` are fine.
///
/// A wrong option, value or signature is a compile error on the offending
/// token.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::job(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Makes a type an event: `#[event(exchange = "...", kind = "...",
/// routing_key = "...", name = "...")]` says where it is published.
///
/// ```
/// use eda_worker::prelude::*;
///
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(exchange = "orders", kind = "topic", routing_key = "order.placed")]
/// pub struct OrderPlaced {
///     pub order_id: i64,
/// }
///
/// fn main() {
///     assert_eq!(<OrderPlaced as Event>::NAME, "order.placed");
/// }
/// ```
///
/// # Options
///
/// | option | value | default |
/// |---|---|---|
/// | `exchange` | string: the exchange, declared durable by whoever publishes or subscribes first; not `amq.`-prefixed | required |
/// | `kind` | `"topic"`, `"fanout"` or `"direct"` | `"topic"` |
/// | `routing_key` | string: the key it is published with; for a topic exchange, dot-separated words without `*` or `#` | required, except for a fanout exchange |
/// | `name` | string: the wire name, the message's `type` | the routing key |
///
/// The type must serialize and deserialize (serde) and not be generic. A
/// wrong option is a compile error on the offending token.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(item: TokenStream) -> TokenStream {
    event::derive(item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
