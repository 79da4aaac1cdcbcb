//! [`Client`]: enqueue jobs from any async code, with broker confirms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::Connection;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::broker::{self, ConnectPolicy, Publisher, QueueSpec};
use crate::config::{DEFAULT_MAX_MESSAGE_SIZE, amqp_url_from_env};
use crate::retry::schedule::publish_delayed;
use crate::wire::{Envelope, now_millis};
use crate::{DelayQueues, Error, Job, QueueType};

/// Publishes jobs to RabbitMQ. Cheap to clone: every clone shares one
/// connection and a pool of confirm-mode channels, across which the confirms
/// of concurrent callers are pipelined.
///
/// ```no_run
/// # use eda_worker::prelude::*;
/// # #[derive(Serialize, Deserialize)] pub struct Welcome { pub user_id: i64 }
/// # #[job(queue = "email")]
/// # pub async fn send_welcome(_ctx: JobContext, _args: Welcome) -> Result<(), JobError> { Ok(()) }
/// # async fn demo() -> Result<(), eda_worker::Error> {
/// let client = Client::from_env().await?;
/// let message_id = client.enqueue(send_welcome, Welcome { user_id: 7 }).await?;
/// println!("queued {message_id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    options: ClientOptions,
    policy: ConnectPolicy,
    session: RwLock<Arc<Session>>,
    /// Serializes reconnects so that a burst of callers opens one connection, not many.
    /// An async mutex: it is held across the connect on purpose, and only by callers
    /// that found the connection dead.
    reconnect: tokio::sync::Mutex<()>,
    /// Queues declared by this client, so each is declared once, not per publish.
    declared: Mutex<HashMap<&'static str, Arc<OnceCell<()>>>>,
    /// Each job queue's delay queues, declared on its first scheduled enqueue.
    delays_declared: Mutex<HashMap<&'static str, Arc<OnceCell<()>>>>,
    /// Set by [`Client::close`]: a closed client does not reconnect.
    closed: AtomicBool,
    /// Reconnects that failed, so that callers who waited on one give up with it.
    failed_reconnects: AtomicUsize,
}

/// Confirm channels per client: concurrent enqueues beyond this wait for one.
const PUBLISH_CHANNELS: usize = 64;

struct Session {
    connection: Arc<Connection>,
    publisher: Publisher,
}

impl Session {
    async fn open(url: &str, name: &str, policy: ConnectPolicy) -> Result<Self, Error> {
        let connection = Arc::new(broker::connect(url, name, policy).await?);
        let publisher = Publisher::new(connection.clone(), PUBLISH_CHANNELS);
        Ok(Session {
            connection,
            publisher,
        })
    }
}

/// How a [`Client`] connects and publishes.
///
/// ```
/// use eda_worker::ClientOptions;
///
/// let options = ClientOptions::default()
///     .connection_name("checkout-web")
///     .max_message_size(512 * 1024);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The connection's name, as RabbitMQ's management tools show it.
    pub connection_name: String,
    /// The delay queues scheduled jobs go through (the workers' set).
    pub delay_queues: DelayQueues,
    /// Larger arguments are refused with [`Error::MessageTooLarge`].
    pub max_message_size: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connection_name: "eda-worker client".to_owned(),
            delay_queues: DelayQueues::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl ClientOptions {
    /// Names the connection (e.g. after the app: `"checkout-web"`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// The delay queues scheduled jobs go through.
    pub fn delay_queues(mut self, delays: DelayQueues) -> Self {
        self.delay_queues = delays;
        self
    }

    /// The largest arguments (as JSON bytes) this client enqueues.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// The correlation id to carry (e.g. the web request's id). A fresh one
    /// (the message id) when `None`.
    pub correlation_id: Option<String>,
    /// The message id to use instead of a fresh UUID (e.g. for idempotent producers).
    pub message_id: Option<Uuid>,
    /// When the job is due; `None` (or a time past) runs it as soon as a worker can.
    due: Option<Due>,
}

/// When a scheduled job is due.
#[derive(Debug, Clone, Copy)]
enum Due {
    In(Duration),
    At(SystemTime),
}

impl Due {
    /// Milliseconds since the epoch, saturating (a delay of centuries is
    /// still a due time, not a panic).
    fn eta_millis(self) -> u64 {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        match self {
            Due::In(delay) => now_millis().saturating_add(millis(delay)),
            Due::At(time) => time.duration_since(UNIX_EPOCH).map_or(0, millis),
        }
    }
}

impl EnqueueOptions {
    /// Carries `correlation_id` into the job and every job it causes.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Uses `message_id` instead of a fresh UUID.
    pub fn message_id(mut self, message_id: Uuid) -> Self {
        self.message_id = Some(message_id);
        self
    }

    /// Runs the job no earlier than `delay` after it is enqueued.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.due = Some(Due::In(delay));
        self
    }

    /// Runs the job no earlier than `time`.
    pub fn at(mut self, time: SystemTime) -> Self {
        self.due = Some(Due::At(time));
        self
    }
}

impl Client {
    /// Connects to the broker at `url` (a few attempts with backoff).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_named(url, "eda-worker client").await
    }

    /// [`Client::connect`], naming the connection as RabbitMQ's management
    /// tools show it (e.g. after the app: `"checkout-web"`).
    pub async fn connect_named(url: &str, connection_name: &str) -> Result<Self, Error> {
        Self::connect_with_options(
            url,
            ClientOptions::default().connection_name(connection_name),
        )
        .await
    }

    /// [`Client::connect`] with options (connection name, delay queues, size limit).
    pub async fn connect_with_options(url: &str, options: ClientOptions) -> Result<Self, Error> {
        Self::connect_with(url, options, ConnectPolicy::default()).await
    }

    /// Connects to `AMQP_URL`, or `amqp://guest:guest@127.0.0.1:5672/%2f` when unset.
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(&amqp_url_from_env()).await
    }

    pub(crate) async fn connect_with(
        url: &str,
        options: ClientOptions,
        policy: ConnectPolicy,
    ) -> Result<Self, Error> {
        let session = Session::open(url, &options.connection_name, policy).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                options,
                policy,
                session: RwLock::new(Arc::new(session)),
                reconnect: tokio::sync::Mutex::new(()),
                declared: Mutex::new(HashMap::new()),
                delays_declared: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                failed_reconnects: AtomicUsize::new(0),
            }),
        })
    }

    /// Enqueues `job` with `args` and returns the message id once the broker
    /// has confirmed it: the job is then safely on a durable queue.
    ///
    /// The argument type is the handler's: passing another one does not compile.
    pub async fn enqueue<J: Job>(&self, job: J, args: J::Args) -> Result<Uuid, Error> {
        self.enqueue_with(job, args, EnqueueOptions::default())
            .await
    }

    /// Enqueues `job` to run no earlier than `delay` from now, through the
    /// delay queues (see [`crate::delay`]). Returns once the broker has
    /// confirmed the message in its delay queue.
    ///
    /// ```no_run
    /// # use eda_worker::prelude::*;
    /// # use std::time::Duration;
    /// # #[job(queue = "email")]
    /// # pub async fn remind(_ctx: JobContext, _args: i64) -> Result<(), JobError> { Ok(()) }
    /// # async fn demo(client: Client) -> Result<(), eda_worker::Error> {
    /// client.enqueue_in(remind, 42, Duration::from_secs(3600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in<J: Job>(
        &self,
        job: J,
        args: J::Args,
        delay: Duration,
    ) -> Result<Uuid, Error> {
        self.enqueue_with(job, args, EnqueueOptions::default().delay(delay))
            .await
    }

    /// Enqueues `job` to run no earlier than `time` (a time in the past runs it
    /// as soon as a worker can).
    pub async fn enqueue_at<J: Job>(
        &self,
        job: J,
        args: J::Args,
        time: SystemTime,
    ) -> Result<Uuid, Error> {
        self.enqueue_with(job, args, EnqueueOptions::default().at(time))
            .await
    }

    /// [`Client::enqueue`] with options (correlation id, message id, due time).
    pub async fn enqueue_with<J: Job>(
        &self,
        _job: J,
        args: J::Args,
        options: EnqueueOptions,
    ) -> Result<Uuid, Error> {
        let body = serde_json::to_vec(&args).map_err(|source| Error::Serialize {
            job: J::NAME,
            source,
        })?;
        let limit = self.inner.options.max_message_size;
        if body.len() > limit {
            return Err(Error::MessageTooLarge {
                job: J::NAME,
                size: body.len(),
                limit,
            });
        }
        // A due time in the past (or now) needs no delay queue.
        let eta = options
            .due
            .map(Due::eta_millis)
            .filter(|eta| *eta > now_millis());
        let message_id = options.message_id.unwrap_or_else(Uuid::new_v4);
        let envelope = Envelope {
            message_id: message_id.to_string(),
            correlation_id: Some(
                options
                    .correlation_id
                    .unwrap_or_else(|| message_id.to_string()),
            ),
            job: Some(J::NAME.to_owned()),
            attempt: 0,
            eta,
        };
        self.publish_to_queue(J::QUEUE, J::QUEUE_TYPE, &body, envelope)
            .await?;
        Ok(message_id)
    }

    /// Publishes a job message to `queue`: through the default exchange, or
    /// through one of its delay queues when it carries a due time.
    pub(crate) async fn publish_to_queue(
        &self,
        queue: &'static str,
        queue_type: QueueType,
        body: &[u8],
        envelope: Envelope,
    ) -> Result<(), Error> {
        let message_id = envelope.message_id.clone();
        let eta = envelope.eta;
        let properties = envelope.into_properties()?;
        let published = self
            .publish_once(
                queue,
                queue_type,
                &message_id,
                body,
                properties.clone(),
                eta,
            )
            .await;
        match published {
            // A queue was deleted under us: declare it again on the next enqueue
            // rather than keep publishing into nothing. A direct enqueue reports
            // it (the caller learns that the queue it published to was gone); a
            // scheduled one declares its delay queues again and tries once more,
            // since a missing delay queue is eda-worker's business, not the caller's.
            Err(Error::Unroutable { .. }) => {
                self.forget_declared(queue);
                if eta.is_none() {
                    return published;
                }
                tracing::warn!(
                    queue,
                    "a delay queue of this job was missing; declaring it again"
                );
                self.publish_once(queue, queue_type, &message_id, body, properties, eta)
                    .await
            }
            published => published,
        }
    }

    async fn publish_once(
        &self,
        queue: &'static str,
        queue_type: QueueType,
        message_id: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
        eta: Option<u64>,
    ) -> Result<(), Error> {
        let session = self.session().await?;
        // Declared before a delayed publish too: an expired message is routed to it.
        self.ensure_declared(&session.connection, queue, queue_type)
            .await?;
        match eta {
            None => {
                session
                    .publisher
                    .publish("", queue, message_id, body, properties)
                    .await
            }
            Some(eta) => {
                self.ensure_delays_declared(&session.connection, queue)
                    .await?;
                publish_delayed(
                    &self.inner.options.delay_queues,
                    &session.publisher,
                    queue,
                    message_id,
                    body,
                    properties,
                    eta,
                )
                .await
                .map(|_bucket| ())
            }
        }
    }

    /// Closes the connection; this client and its clones refuse to enqueue from now on.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let session = self.current_session();
        session.publisher.close().await;
        session
            .connection
            .close(200, "client closed".into())
            .await
            .map_err(|source| Error::Broker {
                operation: "close of the connection".into(),
                source,
            })
    }

    fn current_session(&self) -> Arc<Session> {
        self.inner
            .session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The live session, reconnecting (once, for all waiting callers) when it died.
    async fn session(&self) -> Result<Arc<Session>, Error> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::ClientClosed);
        }
        let session = self.current_session();
        if session.publisher.is_usable() {
            return Ok(session);
        }
        let failures_before = self.inner.failed_reconnects.load(Ordering::SeqCst);
        let _gate = self.inner.reconnect.lock().await;
        let session = self.current_session();
        if session.publisher.is_usable() {
            return Ok(session);
        }
        let redacted = broker::redact_url(&self.inner.url);
        if self.inner.failed_reconnects.load(Ordering::SeqCst) != failures_before {
            // A reconnect failed while this caller waited: report that instead of
            // queueing one full round of attempts per waiting caller.
            return Err(Error::NotConnected { url: redacted });
        }
        tracing::warn!(url = %redacted, "connection to RabbitMQ lost, reconnecting");
        let opened = Session::open(
            &self.inner.url,
            &self.inner.options.connection_name,
            self.inner.policy,
        )
        .await;
        let fresh = match opened {
            Ok(session) => Arc::new(session),
            Err(error) => {
                self.inner.failed_reconnects.fetch_add(1, Ordering::SeqCst);
                return Err(error);
            }
        };
        {
            // Checked under the lock that `close` reads the session with, so a
            // close cannot slip in between the check and the swap.
            let mut slot = self
                .inner
                .session
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !self.inner.closed.load(Ordering::SeqCst) {
                *slot = fresh.clone();
                return Ok(fresh);
            }
        }
        fresh.publisher.close().await;
        let _ = fresh.connection.close(200, "client closed".into()).await;
        Err(Error::ClientClosed)
    }

    async fn ensure_declared(
        &self,
        connection: &Connection,
        queue: &'static str,
        queue_type: QueueType,
    ) -> Result<(), Error> {
        let cell = {
            let mut declared = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            declared.entry(queue).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            broker::declare_queue(connection, &QueueSpec::job(queue, queue_type)).await
        })
        .await
        .map(|_| ())
    }

    async fn ensure_delays_declared(
        &self,
        connection: &Connection,
        queue: &'static str,
    ) -> Result<(), Error> {
        let cell = self
            .inner
            .delays_declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(queue)
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.inner.options.delay_queues.declare(connection, queue))
            .await
            .map(|_| ())
    }

    /// Forgets that `queue` and its delay queues were declared.
    fn forget_declared(&self, queue: &'static str) {
        self.inner
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
        self.inner
            .delays_declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &broker::redact_url(&self.inner.url))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_can_be_shared_across_web_handlers() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<super::Client>();
    }
}
