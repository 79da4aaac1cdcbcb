//! [`Client`]: enqueue jobs from any async code, with broker confirms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use lapin::Connection;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::broker::{self, ConnectPolicy, Publisher, QueueSpec};
use crate::config::amqp_url_from_env;
use crate::wire::Envelope;
use crate::{Error, Job};

/// Publishes jobs to RabbitMQ. Cheap to clone: every clone shares one
/// connection and one confirm-mode channel, on which the confirms of all
/// concurrent callers are pipelined.
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
    /// The connection's name, kept for reconnects.
    name: String,
    policy: ConnectPolicy,
    session: RwLock<Arc<Session>>,
    /// Serializes reconnects so that a burst of callers opens one connection, not many.
    /// An async mutex: it is held across the connect on purpose, and only by callers
    /// that found the connection dead.
    reconnect: tokio::sync::Mutex<()>,
    /// Queues declared by this client, so each is declared once, not per publish.
    declared: Mutex<HashMap<&'static str, Arc<OnceCell<()>>>>,
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

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// The correlation id to carry (e.g. the web request's id). A fresh one
    /// (the message id) when `None`.
    pub correlation_id: Option<String>,
    /// The message id to use instead of a fresh UUID (e.g. for idempotent producers).
    pub message_id: Option<Uuid>,
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
}

impl Client {
    /// Connects to the broker at `url` (a few attempts with backoff).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_named(url, "eda-worker client").await
    }

    /// [`Client::connect`], naming the connection as RabbitMQ's management
    /// tools show it (e.g. after the app: `"checkout-web"`).
    pub async fn connect_named(url: &str, connection_name: &str) -> Result<Self, Error> {
        Self::connect_with(url, connection_name, ConnectPolicy::default()).await
    }

    /// Connects to `AMQP_URL`, or `amqp://guest:guest@127.0.0.1:5672/%2f` when unset.
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect(&amqp_url_from_env()).await
    }

    pub(crate) async fn connect_with(
        url: &str,
        name: &str,
        policy: ConnectPolicy,
    ) -> Result<Self, Error> {
        let session = Session::open(url, name, policy).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                name: name.to_owned(),
                policy,
                session: RwLock::new(Arc::new(session)),
                reconnect: tokio::sync::Mutex::new(()),
                declared: Mutex::new(HashMap::new()),
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

    /// [`Client::enqueue`] with options (correlation id, message id).
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
        };
        self.publish_to_queue(J::QUEUE, &body, envelope).await?;
        Ok(message_id)
    }

    /// Publishes a job message to `queue` through the default exchange.
    pub(crate) async fn publish_to_queue(
        &self,
        queue: &'static str,
        body: &[u8],
        envelope: Envelope,
    ) -> Result<(), Error> {
        let message_id = envelope.message_id.clone();
        let properties = envelope.into_properties()?;
        let session = self.session().await?;
        self.ensure_declared(&session.connection, queue).await?;
        let published = session
            .publisher
            .publish("", queue, &message_id, body, properties)
            .await;
        if let Err(Error::Unroutable { .. }) = &published {
            // The queue was deleted under us: declare it again on the next enqueue
            // rather than keep publishing into nothing.
            self.forget_declared(queue);
        }
        published
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
        let fresh = match Session::open(&self.inner.url, &self.inner.name, self.inner.policy).await
        {
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
            broker::declare_queue(connection, &QueueSpec::durable(queue)).await
        })
        .await
        .map(|_| ())
    }

    fn forget_declared(&self, queue: &'static str) {
        self.inner
            .declared
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
