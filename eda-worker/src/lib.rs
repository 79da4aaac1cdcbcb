#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
//! Typed background jobs and event handlers on RabbitMQ.
//!
//! Put `#[job]` on an async function; enqueue it from any async code with a
//! [`Client`]; run the `worker` command ([`cli::main`]) once per deployment.
//!
//! ```no_run
//! use eda_worker::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Welcome { pub user_id: i64, pub email: String }
//!
//! #[job(queue = "email", retries = 3)]
//! pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
//!     println!("attempt {} for {}", ctx.attempt(), args.email);
//!     Ok(())
//! }
//!
//! # async fn web_handler() -> Result<(), eda_worker::Error> {
//! let client = Client::from_env().await?;
//! // Returns once the broker has confirmed the message.
//! let id = client.enqueue(send_welcome, Welcome { user_id: 1, email: "a@b.c".into() }).await?;
//! # let _ = id; Ok(()) }
//! ```
//!
//! Where things are: [`job`](mod@job) (the trait, the registry, the handler's
//! context), [`Client`] (enqueue), [`Worker`] (the runtime), [`retry`]
//! (backoff and delay queues), [`dead_letter`] (dead-letter queues and their
//! tooling), [`postgres`] (migrations, the inbox, the [`outbox`]), [`cli`]
//! (the `worker` command) and [`wire`] (header names). The repository's
//! `docs/` describe the wire format, failure handling and operations.

// Lets `#[job]` (which names `::eda_worker::...`) be used inside this crate's own tests.
#[allow(unused_extern_crates)]
extern crate self as eda_worker;

/// Builder methods that each set one field and return `self`: a line
/// `/// doc` + `name(Type) => field;` per method. The value goes through
/// `Into`, so `impl Into<String>` works, and a `T` fills an `Option<T>`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($value:ty) => $field:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: $value) -> Self {
            self.$field = value.into();
            self
        }
    )*};
}

mod broker;
pub mod cli;
mod client;
mod config;
pub mod dead_letter;
mod error;
pub mod event;
pub mod job;
pub mod postgres;
pub mod retry;
pub mod wire;
mod worker;

pub use broker::{ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, QueueType, Tls, redact_url};
pub use client::{
    CallError, Client, ClientOptions, DEFAULT_PUBLISH_TIMEOUT, EnqueueOptions, PublishOptions,
};
pub use config::{
    DEFAULT_AMQP_URL, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_ATTEMPTS, DEFAULT_CONSUMER_TIMEOUT,
    DEFAULT_ETA_HORIZON, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_STARTS, DEFAULT_SHUTDOWN_TIMEOUT,
    WorkerConfig, amqp_url_from_env,
};
pub use eda_worker_macros::job;
pub use error::{Error, MAX_ERROR_TEXT, error_chain_text};
pub use event::{Event, ExchangeKind, Published};
pub use job::{
    Binding, DEFAULT_RETRIES, DEFAULT_TIMEOUT, HandlerFuture, Job, JobContext, JobDefinition,
    JobError, JobErrorKind, JobTx, Registry, Subscription,
};
pub use postgres::outbox;
pub use retry::{Backoff, DEFAULT_BACKOFF, DelayQueues};
pub use wire::MessageId;
pub use worker::Worker;

/// What a job module needs: `use eda_worker::prelude::*;`.
pub mod prelude {
    pub use crate::{Client, Event, Job, JobContext, JobError};
    pub use eda_worker_macros::{Event, job};
    pub use serde::{Deserialize, Serialize};
}

/// Used by the code `#[job]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::QueueType;
    pub use crate::event::{Event, ExchangeKind};
    pub use crate::job::{Binding, Job, JobDefinition, Subscription};
    pub use crate::retry::Backoff;
    pub use inventory;
    pub use std::time::Duration;
}
