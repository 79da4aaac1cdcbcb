//! [`Client`]: enqueue jobs from any async code, with broker confirms.

mod call;
mod options;

pub use call::CallError;
use options::Due;
pub use options::{ClientOptions, DEFAULT_PUBLISH_TIMEOUT, EnqueueOptions, PublishOptions};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use lapin::Connection;
use tokio::sync::OnceCell;

use crate::broker::{self, BROKER_CALL_TIMEOUT, ConnectPolicy, Publisher, QueueSpec};
use crate::config::amqp_url_from_env;
use crate::event::{Event, ExchangeKind, Published};
use crate::retry::schedule::publish_delayed;
use crate::wire::{Envelope, MessageId, Payload, now_millis};
use crate::{Error, Job, QueueType, Tls};

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
    /// The reconnect in progress: the callers that find the connection dead
    /// share one attempt, and each waits for it only until its own deadline.
    /// No lock is held while it runs; its task empties the slot when done.
    reconnecting: Mutex<Option<Reconnect>>,
    /// Queues declared by this client, so each is declared once, not per publish.
    declared: Declared,
    /// Each job queue's delay queues, declared on its first scheduled enqueue.
    delays_declared: Declared,
    /// Event exchanges declared by this client, with the kind declared.
    exchanges_declared: Declared<(&'static str, ExchangeKind)>,
    /// Set by [`Client::close`]: a closed client does not reconnect.
    closed: AtomicBool,
}

/// A reconnect, shared by every caller waiting on it.
type Reconnect = Shared<BoxFuture<'static, Result<Arc<Session>, Arc<Error>>>>;

/// Empties a client's reconnect slot when its reconnect task ends, so that
/// the next caller that finds the connection dead starts a new one.
struct EmptySlotOnDrop(std::sync::Weak<Inner>);

impl Drop for EmptySlotOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            *inner
                .reconnecting
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// Confirm channels per client, each with many enqueues in flight (see
/// `broker::Publisher`): two, so that one takes enqueues while the other
/// waits for the last confirms of its round; more only split the same work
/// into smaller rounds.
const PUBLISH_CHANNELS: usize = 2;

struct Session {
    connection: Arc<Connection>,
    publisher: Publisher,
    /// The call channel, opened on the first `call` (and again when it died).
    caller: tokio::sync::Mutex<Option<Arc<call::Caller>>>,
}

impl Session {
    async fn open(url: &str, tls: &Tls, name: &str, policy: ConnectPolicy) -> Result<Self, Error> {
        let connection = Arc::new(broker::connect(url, tls, name, policy).await?);
        let publisher = Publisher::new(connection.clone(), PUBLISH_CHANNELS);
        Ok(Session {
            connection,
            publisher,
            caller: tokio::sync::Mutex::new(None),
        })
    }

    /// The session's call channel, opened if it has none that is usable.
    async fn caller(&self) -> Result<Arc<call::Caller>, Error> {
        let mut caller = self.caller.lock().await;
        if let Some(open) = caller.as_ref().filter(|open| open.is_usable()) {
            return Ok(open.clone());
        }
        let open = Arc::new(call::Caller::open(&self.connection).await?);
        *caller = Some(open.clone());
        Ok(open)
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

    /// Connects to `AMQP_URL`, or `amqp://guest:guest@127.0.0.1:5672/%2f`
    /// when unset, with the TLS files of `AMQP_TLS_CA`, `AMQP_TLS_CERT` and
    /// `AMQP_TLS_KEY`.
    pub async fn from_env() -> Result<Self, Error> {
        Self::connect_with_options(
            &amqp_url_from_env(),
            ClientOptions::default().tls(Tls::from_env()),
        )
        .await
    }

    pub(crate) async fn connect_with(
        url: &str,
        options: ClientOptions,
        policy: ConnectPolicy,
    ) -> Result<Self, Error> {
        let session = Session::open(url, &options.tls, &options.connection_name, policy).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                options,
                policy,
                session: RwLock::new(Arc::new(session)),
                reconnecting: Mutex::new(None),
                declared: Mutex::new(HashMap::new()),
                delays_declared: Mutex::new(HashMap::new()),
                exchanges_declared: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Enqueues `job` with `args` and returns the message id once the broker
    /// has confirmed it: the job is then safely on a durable queue.
    ///
    /// The argument type is the handler's: passing another one does not compile.
    pub async fn enqueue<J: Job>(&self, job: J, args: J::Args) -> Result<MessageId, Error> {
        self.enqueue_with(job, args, EnqueueOptions::default())
            .await
    }

    /// Enqueues `job` to run no earlier than `delay` from now, through the
    /// delay queues (see [`crate::retry`]). Returns once the broker has
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
    ) -> Result<MessageId, Error> {
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
    ) -> Result<MessageId, Error> {
        self.enqueue_with(job, args, EnqueueOptions::default().at(time))
            .await
    }

    /// [`Client::enqueue`] with options (correlation id, message id, due time).
    pub async fn enqueue_with<J: Job>(
        &self,
        _job: J,
        args: J::Args,
        options: EnqueueOptions,
    ) -> Result<MessageId, Error> {
        let body = crate::wire::json_body(
            &args,
            Payload::Job(J::NAME),
            self.inner.options.max_message_size,
        )?;
        // A due time in the past (or now) needs no delay queue.
        let eta = options
            .due
            .map(Due::eta_millis)
            .filter(|eta| *eta > now_millis());
        let message_id = options.message_id.unwrap_or_default();
        let envelope = Envelope {
            message_id: message_id.to_string(),
            correlation_id: options.correlation_id,
            job: Some(J::NAME.to_owned()),
            attempt: 0,
            eta,
        };
        let timeout = self.inner.options.publish_timeout;
        let published = self.publish_to_queue(J::QUEUE, J::QUEUE_TYPE, &body, envelope);
        match tokio::time::timeout(timeout, published).await {
            Ok(published) => published.map(|()| message_id),
            Err(_elapsed) => Err(Error::PublishTimeout {
                message_id: message_id.to_string(),
                timeout,
            }),
        }
    }

    /// Publishes `event` to its exchange (declared on first use, durable)
    /// and returns once the broker has confirmed it.
    ///
    /// An event that no queue takes is not an error: it is confirmed, logged,
    /// and [`Published::routed`] is `false`.
    pub async fn publish<E: Event>(&self, event: E) -> Result<Published, Error> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// [`Client::publish`] with options (correlation id, message id).
    pub async fn publish_with<E: Event>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<Published, Error> {
        let body = crate::wire::json_body(
            &event,
            Payload::Event(E::NAME),
            self.inner.options.max_message_size,
        )?;
        let message_id = options.message_id.unwrap_or_default();
        let envelope = Envelope {
            message_id: message_id.to_string(),
            correlation_id: options.correlation_id,
            job: Some(E::NAME.to_owned()),
            attempt: 0,
            eta: None,
        };
        let wire_id = envelope.message_id.clone();
        let properties = envelope.into_properties()?;
        let published = async {
            let session = self.session().await?;
            self.ensure_exchange_declared(&session.connection, E::EXCHANGE, E::KIND)
                .await?;
            session
                .publisher
                .publish_to_declared(E::EXCHANGE, E::ROUTING_KEY, &wire_id, &body, properties)
                .await
        };
        let timeout = self.inner.options.publish_timeout;
        match tokio::time::timeout(timeout, published).await {
            Ok(Ok(())) => Ok(Published {
                message_id,
                routed: true,
            }),
            Ok(Err(Error::Unroutable { .. })) => {
                tracing::info!(
                    event = E::NAME,
                    exchange = E::EXCHANGE,
                    routing_key = E::ROUTING_KEY,
                    message_id = %message_id,
                    "no queue is bound for this event: it was confirmed and dropped"
                );
                Ok(Published {
                    message_id,
                    routed: false,
                })
            }
            Ok(Err(error)) => {
                // Declared again on the next publish: the exchange may be what is gone.
                self.forget_exchange(E::EXCHANGE, E::KIND);
                Err(error)
            }
            Err(_elapsed) => Err(Error::PublishTimeout {
                message_id: message_id.to_string(),
                timeout,
            }),
        }
    }

    /// Runs `job` with `args` on a worker and returns its reply: the handler's
    /// `Ok` value (`T` of its `Result<T, JobError>`), or why there is none.
    ///
    /// The request is published confirmed, with a deadline of `timeout`
    /// from now: the caller waits across the job's retries until then, and
    /// a worker that finds the deadline passed acks the request unrun. A
    /// lost connection fails the call at once; a handler's failure comes
    /// back as [`CallError::Failed`], a request the inbox processed before
    /// as [`CallError::Duplicate`].
    ///
    /// ```no_run
    /// # use eda_worker::prelude::*;
    /// # use std::time::Duration;
    /// # #[derive(Serialize, Deserialize)] pub struct QuoteRequest { pub quantity: u32 }
    /// # #[derive(Serialize, Deserialize)] pub struct Quote { pub cents: i64 }
    /// # #[job(queue = "quotes")]
    /// # pub async fn quote(_ctx: JobContext, r: QuoteRequest) -> Result<Quote, JobError> { Ok(Quote { cents: 0 }) }
    /// # async fn demo(client: Client) -> Result<(), eda_worker::CallError> {
    /// let reply: Quote = client.call(quote, QuoteRequest { quantity: 3 }, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<J: Job>(
        &self,
        _job: J,
        args: J::Args,
        timeout: Duration,
    ) -> Result<J::Output, CallError> {
        let body = crate::wire::json_body(
            &args,
            Payload::Job(J::NAME),
            self.inner.options.max_message_size,
        )?;
        let message_id = MessageId::new().to_string();
        let envelope = Envelope {
            message_id: message_id.clone(),
            correlation_id: None,
            job: Some(J::NAME.to_owned()),
            attempt: 0,
            eta: None,
        };
        let properties = envelope.into_properties()?;
        let session = tokio::time::timeout(timeout, self.session())
            .await
            .map_err(|_| CallError::Timeout {
                job: J::NAME,
                timeout,
            })??;
        self.ensure_declared(&session.connection, J::QUEUE, J::QUEUE_TYPE)
            .await?;
        let caller = session.caller().await?;
        let reply = caller
            .call(J::NAME, J::QUEUE, &message_id, &body, properties, timeout)
            .await;
        if let Err(CallError::Request(Error::Unroutable { .. })) = &reply {
            // Its queue was deleted: declared again on the next call.
            self.forget_declared(J::QUEUE);
        }
        reply?.into_output(J::NAME, &message_id)
    }

    /// The calls of this client waiting for their reply (see
    /// [`Client::call`]): every call leaves this count when it ends, with a
    /// reply, an error or a timeout.
    pub async fn calls_in_flight(&self) -> usize {
        let session = self.current_session();
        let caller = session.caller.lock().await;
        caller.as_ref().map_or(0, |caller| caller.pending())
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
        // Kept for the second try below, which only a delayed publish makes.
        let again = eta.map(|_| properties.clone());
        let published = self
            .publish_once(queue, queue_type, &message_id, body, properties, eta)
            .await;
        match published {
            // A queue was deleted under us: declare it again on the next enqueue
            // rather than keep publishing into nothing. A direct enqueue reports
            // it (the caller learns that the queue it published to was gone); a
            // scheduled one declares its delay queues again and tries once more,
            // since a missing delay queue is eda-worker's business, not the caller's.
            Err(Error::Unroutable { .. }) => {
                self.forget_declared(queue);
                let Some(properties) = again else {
                    return published;
                };
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

    /// Closes the connection; this client and its clones refuse to enqueue
    /// from now on. A connection that is already gone (its node died) is
    /// not an error.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let session = self.current_session();
        if !session.connection.status().connected() {
            // Its node died or the broker closed it: nothing is left to close,
            // and the next enqueue would have reconnected.
            return Ok(());
        }
        // Bounded: a broker that blocks this connection answers nothing.
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, session.publisher.close()).await;
        if let Some(caller) = session.caller.lock().await.take() {
            caller.close().await;
        }
        broker::bounded(
            || "close of the connection".into(),
            session.connection.close(200, "client closed".into()),
        )
        .await
    }

    fn current_session(&self) -> Arc<Session> {
        self.inner
            .session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The live session, reconnecting when it died: one reconnect, shared by
    /// all the callers that wait for it (each until its own deadline).
    async fn session(&self) -> Result<Arc<Session>, Error> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::ClientClosed);
        }
        let session = self.current_session();
        if session.publisher.is_usable() {
            return Ok(session);
        }
        let reconnect = {
            let mut slot = self
                .inner
                .reconnecting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Another caller's reconnect may have finished meanwhile.
            let session = self.current_session();
            if session.publisher.is_usable() {
                return Ok(session);
            }
            slot.get_or_insert_with(|| self.reconnect()).clone()
        };
        reconnect.await.map_err(|source| match *source {
            Error::ClientClosed => Error::ClientClosed,
            _ => Error::NotConnected {
                url: broker::redact_url(&self.inner.url),
                source: Some(source),
            },
        })
    }

    /// Starts a reconnect: a task of its own that opens a session, swaps it
    /// in (unless the client was closed meanwhile) and empties the reconnect
    /// slot when it ends, whether or not anyone still waits for it. It holds
    /// the client weakly, so a dropped client is not kept alive by it.
    fn reconnect(&self) -> Reconnect {
        let client = Arc::downgrade(&self.inner);
        let url = self.inner.url.clone();
        let name = self.inner.options.connection_name.clone();
        let tls = self.inner.options.tls.clone();
        let policy = self.inner.policy;
        let task = tokio::spawn(async move {
            // Emptied however the task ends (a panic included).
            let _slot = EmptySlotOnDrop(client.clone());
            let redacted = broker::redact_url(&url);
            tracing::warn!(url = %redacted, "connection to RabbitMQ lost, reconnecting");
            let opened = Session::open(&url, &tls, &name, policy).await;
            let fresh = match opened {
                Ok(fresh) => Arc::new(fresh),
                Err(error) => {
                    tracing::warn!(url = %redacted, error = %crate::error::error_chain_text(&error), "could not reconnect to RabbitMQ; the next enqueue tries again");
                    return Err(Arc::new(error));
                }
            };
            if let Some(inner) = client.upgrade() {
                // Checked under the lock that `close` reads the session with, so a
                // close cannot slip in between the check and the swap.
                let mut slot = inner
                    .session
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if !inner.closed.load(Ordering::SeqCst) {
                    *slot = fresh.clone();
                    return Ok(fresh);
                }
            }
            fresh.publisher.close().await;
            let _ = fresh.connection.close(200, "client closed".into()).await;
            Err(Arc::new(Error::ClientClosed))
        });
        async move {
            task.await.unwrap_or_else(|failed| {
                Err(Arc::new(Error::Config(format!(
                    "the reconnect task failed: {failed}"
                ))))
            })
        }
        .boxed()
        .shared()
    }

    async fn ensure_declared(
        &self,
        connection: &Connection,
        queue: &'static str,
        queue_type: QueueType,
    ) -> Result<(), Error> {
        declare_once(&self.inner.declared, queue, || async move {
            broker::declare_queue(connection, &QueueSpec::job(queue, queue_type)).await
        })
        .await
    }

    async fn ensure_delays_declared(
        &self,
        connection: &Connection,
        queue: &'static str,
    ) -> Result<(), Error> {
        declare_once(&self.inner.delays_declared, queue, || {
            self.inner.options.delay_queues.declare(connection, queue)
        })
        .await
    }

    async fn ensure_exchange_declared(
        &self,
        connection: &Connection,
        exchange: &'static str,
        kind: ExchangeKind,
    ) -> Result<(), Error> {
        declare_once(&self.inner.exchanges_declared, (exchange, kind), || {
            broker::declare_exchange(connection, exchange, kind)
        })
        .await
    }

    fn forget_exchange(&self, exchange: &'static str, kind: ExchangeKind) {
        self.inner
            .exchanges_declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(exchange, kind));
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

/// Queues (or exchanges, with their kind) declared by a client, each once:
/// concurrent first publishes to one share one declaration.
type Declared<K = &'static str> = Mutex<HashMap<K, Arc<OnceCell<()>>>>;

/// Runs `declare` for `key` unless it succeeded before (and was not forgotten since).
async fn declare_once<K, F, Fut>(declared: &Declared<K>, key: K, declare: F) -> Result<(), Error>
where
    K: std::hash::Hash + Eq,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let cell = declared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_try_init(declare).await.map(|_| ())
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
