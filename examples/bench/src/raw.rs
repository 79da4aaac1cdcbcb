//! The raw lapin baselines: what a hand-written lapin producer and consumer
//! do, with nothing of eda-worker in the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::report::Latencies;

/// Where raw messages go: an exchange (empty: the default one) and a
/// routing key (for the default exchange, the queue).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) exchange: &'static str,
    pub(crate) routing_key: &'static str,
}

impl Target {
    /// A queue, through the default exchange.
    pub(crate) fn queue(queue: &'static str) -> Self {
        Target {
            exchange: "",
            routing_key: queue,
        }
    }
}

/// Publishes `body` to an exchange (empty: the default one, whose routing
/// key is the queue), `mandatory`, and fails unless the broker
/// confirms it (acked, not returned).
async fn publish_confirmed(
    channel: &lapin::Channel,
    (exchange, routing_key): (&str, &str),
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await?
        .await?;
    if confirm != Confirmation::Ack(None) {
        bail!("raw publish to `{exchange}` with `{routing_key}` not confirmed: {confirm:?}");
    }
    Ok(())
}

/// A consumer of `queue` tagged `tag`, with default options.
pub(crate) async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> anyhow::Result<lapin::Consumer> {
    Ok(channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Which properties the raw messages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    /// The properties of an eda-worker first delivery, set by hand
    /// (`delivery_mode`, a compact UUIDv7 id, `type`): the fair baseline.
    SameAsEda,
    /// Only `content_type` and `delivery_mode`: a bare message.
    Bare,
    /// A 36-character id, `type` and `timestamp`, without `content_type`.
    LongId,
    /// [`Format::SameAsEda`] with a header table holding `x-eda-attempt: 0`.
    LeanWithHeader,
    /// An event's first delivery: [`Format::SameAsEda`] with the bench
    /// event's wire name as `type`.
    Event,
    /// What eda-worker wrote before its first deliveries were made lean:
    /// `content_type`, a 36-character id, the same `correlation_id`,
    /// `type`, `timestamp` and `x-eda-attempt: 0`.
    OldFull,
}

impl Format {
    /// Every format, in the order of the property-size table.
    pub(crate) const ALL: [Format; 5] = [
        Format::Bare,
        Format::SameAsEda,
        Format::LongId,
        Format::LeanWithHeader,
        Format::OldFull,
    ];

    pub(crate) fn properties(self, n: u64) -> BasicProperties {
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let attempt_zero = || {
            let mut headers = FieldTable::default();
            headers.insert("x-eda-attempt".into(), AMQPValue::LongLongInt(0));
            headers
        };
        let long_id = || uuid::Uuid::new_v4().to_string();
        let lean = |kind: &str| {
            persistent
                .clone()
                .with_message_id(eda_worker::MessageId::new().to_string().into())
                .with_type(kind.into())
        };
        match self {
            Format::Bare => persistent.with_content_type("application/json".into()),
            Format::SameAsEda => lean("noop"),
            Format::Event => lean(crate::EVENT_NAME),
            Format::LongId => persistent
                .with_message_id(long_id().into())
                .with_type("noop".into())
                .with_timestamp(1_700_000_000 + n),
            Format::LeanWithHeader => lean("noop").with_headers(attempt_zero()),
            Format::OldFull => {
                let id = long_id();
                persistent
                    .with_content_type("application/json".into())
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.as_str().into())
                    .with_type("noop".into())
                    .with_timestamp(1_700_000_000 + n)
                    .with_headers(attempt_zero())
            }
        }
    }

    /// What the format is, for the report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Format::Bare => "content_type + delivery_mode only",
            Format::SameAsEda => "eda-worker's lean first delivery (22-char id + type)",
            Format::Event => "an event's lean first delivery",
            Format::LongId => "36-char id + type + timestamp",
            Format::LeanWithHeader => "lean + an x-eda-attempt header table",
            Format::OldFull => {
                "the old full format (content_type, 36-char id and correlation_id, type, timestamp, header)"
            }
        }
    }

    /// The bytes its properties take in a content header, as lapin encodes
    /// them (the property flags and the properties set).
    pub(crate) fn encoded_size(self) -> usize {
        lapin::protocol::basic::gen_properties(&self.properties(0))(
            cookie_factory::WriteContext::from(Vec::new()),
        )
        .map_or(0, |written| written.write.len())
    }
}

/// Queue housekeeping for the benchmark.
pub(crate) struct Admin {
    connection: Connection,
}

impl Admin {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Admin {
            connection: Connection::connect(url, ConnectionProperties::default()).await?,
        })
    }

    /// Deletes and re-declares `queue`, durable and empty.
    pub(crate) async fn reset(&self, queue: &str) -> anyhow::Result<()> {
        self.delete(queue).await?;
        self.declare_durable(queue, FieldTable::default()).await
    }

    /// Declares `queue`, durable, with `arguments`.
    async fn declare_durable(&self, queue: &str, arguments: FieldTable) -> anyhow::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let channel = self.connection.create_channel().await?;
        channel
            .queue_declare(queue.into(), durable, arguments)
            .await?;
        Ok(())
    }

    /// Deletes `queue`.
    pub(crate) async fn delete(&self, queue: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// Deletes the delay queues of `queue`.
    pub(crate) async fn delete_delays(
        &self,
        queue: &str,
        delays: &eda_worker::DelayQueues,
    ) -> anyhow::Result<()> {
        for bucket in delays.buckets() {
            self.delete(&delays.name(queue, *bucket)).await?;
        }
        Ok(())
    }

    /// Declares a 1 s delay queue for `queue` by hand, as eda-worker declares
    /// its own: a quorum queue dead-lettering back to `queue`, at least once.
    pub(crate) async fn declare_delay(&self, queue: &str) -> anyhow::Result<String> {
        let name = format!("{queue}.delay.1s");
        let mut arguments = FieldTable::default();
        for (key, value) in [
            ("x-queue-type", "quorum"),
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", queue),
            ("x-dead-letter-strategy", "at-least-once"),
            ("x-overflow", "reject-publish"),
        ] {
            arguments.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
        self.declare_durable(&name, arguments).await?;
        Ok(name)
    }

    /// Empties `queue`.
    /// Declares `exchange` (durable, topic) and `queues`, each emptied and
    /// bound to it with `key`.
    pub(crate) async fn topic_with_queues(
        &self,
        exchange: &str,
        key: &str,
        queues: &[&str],
    ) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for queue in queues {
            self.reset(queue).await?;
            channel
                .queue_bind(
                    (*queue).into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes `exchange` and `queues`.
    pub(crate) async fn delete_topic(&self, exchange: &str, queues: &[&str]) -> anyhow::Result<()> {
        for queue in queues {
            self.delete(queue).await?;
        }
        let channel = self.connection.create_channel().await?;
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(())
    }

    pub(crate) async fn purge(&self, queue: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        Ok(())
    }
}

/// `count` confirmed, persistent, mandatory publishes of JSON bodies from
/// `publishers` concurrent tasks sharing one confirm-mode channel.
pub(crate) async fn publish<T: Serialize + 'static>(
    url: &str,
    queue: &'static str,
    count: u64,
    publishers: usize,
    payload: fn(u64) -> T,
    format: Format,
) -> anyhow::Result<Latencies> {
    publish_to(
        url,
        Target::queue(queue),
        count,
        publishers,
        payload,
        format,
    )
    .await
}

/// [`publish`] to `target` (an exchange and routing key).
pub(crate) async fn publish_to<T: Serialize + 'static>(
    url: &str,
    target: Target,
    count: u64,
    publishers: usize,
    payload: fn(u64) -> T,
    format: Format,
) -> anyhow::Result<Latencies> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    publish_on(connection, target, count, publishers, payload, format).await
}

/// [`publish`] over an `amqps://` URL with `tls`.
pub(crate) async fn publish_with_tls<T: Serialize + 'static>(
    url: &str,
    tls: OwnedTLSConfig,
    queue: &'static str,
    count: u64,
    publishers: usize,
    payload: fn(u64) -> T,
    format: Format,
) -> anyhow::Result<Latencies> {
    let connection = Connection::connect_with_config(
        url,
        ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await?;
    publish_on(
        connection,
        Target::queue(queue),
        count,
        publishers,
        payload,
        format,
    )
    .await
}

async fn publish_on<T: Serialize + 'static>(
    connection: Connection,
    target: Target,
    count: u64,
    publishers: usize,
    payload: fn(u64) -> T,
    format: Format,
) -> anyhow::Result<Latencies> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm_channel = channel.clone();
    let latencies = crate::report::concurrently(count, publishers, move |n| {
        let channel = channel.clone();
        async move {
            let body = serde_json::to_vec(&payload(n))?;
            let target = (target.exchange, target.routing_key);
            publish_confirmed(&channel, target, &body, format.properties(n)).await?;
            Ok(())
        }
    })
    .await?;
    // Channel before connection, or lapin reports the channel's close as an error.
    confirm_channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(latencies)
}

/// What a drain measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drained {
    pub(crate) messages: u64,
    /// From the start, before connecting, to the first delivery.
    pub(crate) startup_seconds: f64,
    /// From the first delivery to the last ack.
    pub(crate) seconds: f64,
}

/// Consumes `count` messages from `queue` with `consumers` consumers
/// (`prefetch` each), acking every `ack_every` messages with `multiple`
/// (1: one ack per message).
pub(crate) async fn drain(
    queue: &str,
    count: u64,
    prefetch: u16,
    consumers: usize,
    ack_every: u64,
) -> anyhow::Result<Drained> {
    let url = eda_worker::amqp_url_from_env();
    let started = Instant::now();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let done = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::new());
    let finished = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..consumers {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = consume(&channel, queue, &format!("raw-{index}")).await?;
        let (done, first, finished) = (done.clone(), first.clone(), finished.clone());
        tasks.spawn(async move {
            let mut unacked = 0u64;
            let mut last = None;
            loop {
                let delivery = tokio::select! {
                    () = finished.cancelled() => break,
                    delivery = consumer.next() => delivery,
                };
                let Some(delivery) = delivery else { break };
                let delivery = delivery?;
                first.get_or_init(Instant::now);
                unacked += 1;
                if unacked >= ack_every {
                    delivery
                        .acker
                        .ack(BasicAckOptions {
                            multiple: ack_every > 1,
                        })
                        .await?;
                    unacked = 0;
                    last = None;
                } else {
                    last = Some(delivery.acker);
                }
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= count {
                    finished.cancel();
                }
            }
            if let Some(acker) = last {
                acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            channel.close(200, "done".into()).await?;
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("drain task")??;
    }
    let first = *first.get().context("no message came")?;
    let drained = Drained {
        messages: done.load(Ordering::Relaxed),
        startup_seconds: first.duration_since(started).as_secs_f64(),
        seconds: first.elapsed().as_secs_f64(),
    };
    connection.close(200, "done".into()).await?;
    Ok(drained)
}

/// The fail-once flow by hand: consumes `queue`; a first attempt is
/// published (confirmed, pipelined on one channel) to `delay_queue`, whose
/// TTL brings it back to `queue`, and acked once confirmed; a retry
/// is acked (one ack per message) and counted. Returns when `count` retries
/// were acked: the jobs and the seconds taken.
pub(crate) async fn fail_once_drain(
    queue: &str,
    count: u64,
    prefetch: u16,
    delay_queue: &str,
) -> anyhow::Result<(u64, f64)> {
    let url = eda_worker::amqp_url_from_env();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume(&channel, queue, "raw-fail-once").await?;
    let started = Instant::now();
    let mut done = 0;
    let mut republishes = tokio::task::JoinSet::new();
    while done < count {
        // Surface a failed republish at once.
        while let Some(joined) = republishes.try_join_next() {
            joined??;
        }
        let Some(delivery) = consumer.next().await else {
            bail!("the consumer of {queue} was cancelled");
        };
        let delivery = delivery?;
        let attempt = eda_worker::wire::header_u64(&delivery.properties, "x-eda-attempt");
        if attempt.unwrap_or(0) > 0 {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            done += 1;
            continue;
        }
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert("x-eda-attempt".into(), AMQPValue::LongLongInt(1));
        headers.insert(
            "x-eda-eta".into(),
            AMQPValue::LongLongInt(i64::try_from(crate::now_millis() + 1000).unwrap_or(i64::MAX)),
        );
        headers.insert(
            "x-eda-error".into(),
            AMQPValue::LongString("first attempts fail on purpose".into()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let (publisher, delay_queue) = (publisher.clone(), delay_queue.to_owned());
        republishes.spawn(async move {
            publish_confirmed(&publisher, ("", &delay_queue), &delivery.data, properties).await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            anyhow::Ok(())
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    while let Some(joined) = republishes.join_next().await {
        joined??;
    }
    publisher.close(200, "done".into()).await?;
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok((done, seconds))
}
