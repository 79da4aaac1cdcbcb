//! Jobs: the [`Job`] trait that `#[job]` implements, the type-erased
//! [`JobDefinition`] the [`Registry`] keeps of every job, the [`JobContext`]
//! a handler gets, and the [`JobError`] it returns.

mod context;
mod error;
mod queue_name;
mod registry;

pub(crate) use context::{FollowUp, FollowUps, LazyBegin, SharedTx, Target, TxSlot, TxState};
pub use context::{JobContext, JobTx};
pub use error::{JobError, JobErrorKind};
pub use queue_name::MAX_QUEUE_NAME;
pub use registry::Registry;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::QueueType;
use crate::event::{Event, ExchangeKind};
use crate::retry::{Backoff, DEFAULT_BACKOFF};

/// Retries after the first attempt when `#[job]` does not say.
pub const DEFAULT_RETRIES: u32 = 3;

/// How long one attempt may run when `#[job]` gives no `timeout`.
///
/// Kept well below RabbitMQ's default consumer timeout (30 minutes), past
/// which the broker closes the channel of a consumer holding an unacked message.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A job: a typed handler bound to a queue. `#[job]` implements it on a unit
/// struct named after the function, which is the job's *handle*:
///
/// ```
/// use eda_worker::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Welcome { pub user_id: i64 }
///
/// #[job(queue = "email", retries = 3)]
/// pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
///     let _ = (ctx.attempt(), args.user_id);
///     Ok(())
/// }
///
/// assert_eq!(<send_welcome as Job>::NAME, "send_welcome");
/// assert_eq!(<send_welcome as Job>::QUEUE, "email");
/// # let rt = tokio::runtime::Runtime::new().unwrap();
/// // The handle runs the body directly, with no broker: handy in unit tests.
/// rt.block_on(send_welcome.call(JobContext::for_test(), Welcome { user_id: 7 })).unwrap();
/// ```
pub trait Job: Default + Copy + Send + Sync + 'static {
    /// The handler's argument type, sent as JSON.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the handler returns on success (`T` of its `Result<T,
    /// JobError>`): the reply of a request, sent as JSON to a message that
    /// has `reply_to`; `()` for a job that answers nothing.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The wire name: the message's `type` property.
    const NAME: &'static str;
    /// The queue the job is published to and consumed from.
    const QUEUE: &'static str;
    /// Retries after the first attempt.
    const RETRIES: u32 = DEFAULT_RETRIES;
    /// How long one attempt may run.
    const TIMEOUT: Duration = DEFAULT_TIMEOUT;
    /// The bounds of the delays between attempts.
    const BACKOFF: Backoff = DEFAULT_BACKOFF;
    /// The type of the job's queue.
    const QUEUE_TYPE: QueueType = QueueType::Classic;
    /// Inbox dedup: `None` (the default) dedups when a database is
    /// configured; `Some(true)` requires one; `Some(false)` opts out.
    const DEDUP: Option<bool> = None;
    /// The events the job's queue is bound to, if any
    /// (`#[job(on = OrderPlaced)]`, `#[job(bind = "orders:order.#")]`).
    const SUBSCRIPTION: Subscription = Subscription::None;

    /// Runs the handler body.
    fn call(
        &self,
        ctx: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// What a job's queue is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// Nothing: the job gets what is enqueued to it.
    None,
    /// An event type (`on = OrderPlaced`): the queue is bound with the
    /// event's routing key, and the job runs the messages of the event's
    /// wire name. Several such jobs may share a queue.
    Event(Binding),
    /// Raw bindings (`bind = "orders:order.#"`): the job runs whatever
    /// arrives on its queue, whatever its `type`, and is its queue's only job.
    Raw(&'static [Binding]),
}

impl Subscription {
    /// The bindings of the job's queue.
    pub fn bindings(&self) -> &[Binding] {
        match self {
            Subscription::None => &[],
            Subscription::Event(binding) => std::slice::from_ref(binding),
            Subscription::Raw(bindings) => bindings,
        }
    }
}

/// A binding of a job's queue to an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The exchange.
    pub exchange: &'static str,
    /// The exchange's kind, declared by the worker; `None` for a raw
    /// binding, whose exchange is used as it is, or declared a topic one
    /// when it does not exist yet.
    pub kind: Option<ExchangeKind>,
    /// The routing key, or a pattern on a topic exchange.
    pub routing_key: &'static str,
}

impl Binding {
    /// The binding that takes event `E`.
    pub const fn of_event<E: Event>() -> Self {
        Binding {
            exchange: E::EXCHANGE,
            kind: Some(E::KIND),
            routing_key: E::ROUTING_KEY,
        }
    }

    /// A raw binding to `exchange` with `routing_key`.
    pub const fn raw(exchange: &'static str, routing_key: &'static str) -> Self {
        Binding {
            exchange,
            kind: None,
            routing_key,
        }
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.exchange, self.routing_key)
    }
}

/// A started handler, type-erased: on success, its output as JSON when a
/// reply was asked for.
pub type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, JobError>> + Send + 'static>>;

/// Decodes a message body into the job's arguments and starts its handler.
type Start = fn(JobContext, &[u8], bool) -> Result<HandlerFuture, serde_json::Error>;

/// What the registry knows of one job: its options and how to run it
/// from raw bytes. `#[job]` submits one per job.
#[derive(Clone, Copy)]
pub struct JobDefinition {
    /// The wire name.
    pub name: &'static str,
    /// The queue.
    pub queue: &'static str,
    /// Retries after the first attempt.
    pub retries: u32,
    /// How long one attempt may run.
    pub timeout: Duration,
    /// The bounds of the delays between attempts.
    pub backoff: Backoff,
    /// The type of the job's queue.
    pub queue_type: QueueType,
    /// Inbox dedup, as declared (see [`Job::DEDUP`]).
    pub dedup: Option<bool>,
    /// The function's path, e.g. `my_app::jobs::send_welcome`, for messages.
    pub function_path: &'static str,
    /// What the job's queue is bound to.
    pub subscription: Subscription,
    start: Start,
}

impl JobDefinition {
    /// The definition of job `J`, whose function lives at `function_path`.
    pub const fn of<J: Job>(function_path: &'static str) -> Self {
        JobDefinition {
            name: J::NAME,
            queue: J::QUEUE,
            retries: J::RETRIES,
            timeout: J::TIMEOUT,
            backoff: J::BACKOFF,
            queue_type: J::QUEUE_TYPE,
            dedup: J::DEDUP,
            function_path,
            subscription: J::SUBSCRIPTION,
            start: start_job::<J>,
        }
    }

    /// Decodes `body` into the job's arguments and returns the running
    /// handler, whose output is serialized when `reply` (the message is a
    /// request).
    pub fn start(
        &self,
        ctx: JobContext,
        body: &[u8],
        reply: bool,
    ) -> Result<HandlerFuture, serde_json::Error> {
        (self.start)(ctx, body, reply)
    }
}

impl std::fmt::Debug for JobDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDefinition")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("queue_type", &self.queue_type)
            .field("dedup", &self.dedup)
            .field("function_path", &self.function_path)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

fn start_job<J: Job>(
    ctx: JobContext,
    body: &[u8],
    reply: bool,
) -> Result<HandlerFuture, serde_json::Error> {
    let args: J::Args = serde_json::from_slice(body)?;
    Ok(Box::pin(async move {
        let output = J::default().call(ctx, args).await?;
        if !reply {
            return Ok(None);
        }
        serde_json::to_vec(&output).map(Some).map_err(|error| {
            JobError::permanent(format!(
                "could not serialize the reply of job `{}` to JSON: {error}",
                J::NAME
            ))
        })
    }))
}

inventory::collect!(JobDefinition);
