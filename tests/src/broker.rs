//! The broker as the tests see it: a raw lapin connection to inspect and
//! change queues behind the library's back, and `rabbitmqctl` to break
//! connections on purpose.

use eda_worker::DelayQueues;
use eda_worker::wire::{HEADER_ERROR, header_text};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::amqp_url;

/// A raw lapin connection for inspecting the broker.
pub struct Broker {
    connection: Connection,
}

impl Broker {
    /// Connects to `AMQP_URL`.
    pub async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run for the integration tests (see .ci/run)");
        Broker { connection }
    }

    /// A fresh channel (a failed operation closes its channel, so tests use one each).
    pub async fn channel(&self) -> Channel {
        self.connection
            .create_channel()
            .await
            .expect("open channel")
    }

    /// Deletes `queue`, its dead-letter queue and its default delay queues,
    /// so a test starts clean.
    pub async fn reset(&self, queue: &str) {
        self.reset_with_delays(queue, &DelayQueues::default()).await;
    }

    /// [`Broker::reset`], and also the delay queues of `delays` (a test's own buckets).
    pub async fn reset_with_delays(&self, queue: &str, delays: &DelayQueues) {
        for name in [queue.to_owned(), eda_worker::dead_letter::queue_name(queue)] {
            self.delete_queue(&name).await;
        }
        for delays in [&DelayQueues::default(), delays] {
            for bucket in delays.buckets() {
                self.delete_queue(&delays.name(queue, *bucket)).await;
            }
        }
    }

    /// Deletes `queue` (nothing happens when it does not exist).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel()
            .await
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .expect("delete queue");
    }

    /// Declares `queue` durable, with `arguments`, as the library would
    /// (or, with other arguments, as it would not).
    pub async fn declare_durable(&self, queue: &str, arguments: FieldTable) {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel()
            .await
            .queue_declare(queue.into(), durable, arguments)
            .await
            .expect("declare queue");
    }

    /// Declares exchange `exchange` durable, of `kind` (`topic`, `fanout`,
    /// `direct`), as the library would (or, of another kind, as it would not).
    pub async fn declare_exchange(&self, exchange: &str, kind: lapin::ExchangeKind) {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel()
            .await
            .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
            .await
            .expect("declare exchange");
    }

    /// Deletes `exchange` (nothing happens when it does not exist).
    pub async fn delete_exchange(&self, exchange: &str) {
        self.channel()
            .await
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    }

    /// Declares `queue` durable (no arguments) and binds it to `exchange`
    /// with `key`, as a subscriber would.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.declare_durable(queue, FieldTable::default()).await;
        self.channel()
            .await
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
    }

    /// Messages ready (not delivered to a consumer) in `queue`; 0 when it does not exist.
    pub async fn ready(&self, queue: &str) -> u32 {
        self.declare_passive(queue)
            .await
            .map_or(0, |(ready, _)| ready)
    }

    /// Consumers of `queue`; 0 when it does not exist.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.declare_passive(queue)
            .await
            .map_or(0, |(_, consumers)| consumers)
    }

    /// Whether `queue` exists.
    pub async fn exists(&self, queue: &str) -> bool {
        self.declare_passive(queue).await.is_some()
    }

    async fn declare_passive(&self, queue: &str) -> Option<(u32, u32)> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .channel()
            .await
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .ok()?;
        Some((declared.message_count(), declared.consumer_count()))
    }

    /// Publishes `body` to `exchange` with `routing_key` and waits for the
    /// confirm, as a foreign or broken producer would (no library involved).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel()
            .await
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
    }

    /// Takes one message off `queue` (acked), or `None` when it is empty.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel()
            .await
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    /// Takes every message off `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self.get(queue).await {
            messages.push(message);
        }
        messages
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// The properties a foreign producer sets on a raw message: its id and,
/// unless `None`, its `type` (the job's wire name).
pub fn foreign_properties(message_id: &str, kind: Option<&str>) -> BasicProperties {
    let properties = BasicProperties::default().with_message_id(message_id.into());
    match kind {
        Some(kind) => properties.with_type(kind.into()),
        None => properties,
    }
}

/// The message's `message_id` property, or `""` when it has none.
pub fn message_id(message: &BasicGetMessage) -> String {
    message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

/// The message of `messages` whose id is `id`; panics when none is.
pub fn find_message<'a>(messages: &'a [BasicGetMessage], id: &str) -> &'a BasicGetMessage {
    messages
        .iter()
        .find(|message| message_id(message) == id)
        .unwrap_or_else(|| panic!("message {id} is not among the {}", messages.len()))
}

/// The `x-eda-error` header of a dead letter, or `""` when it has none.
pub fn error_header(message: &BasicGetMessage) -> String {
    header_text(&message.delivery.properties, HEADER_ERROR).unwrap_or_default()
}

/// Runs `rabbitmqctl` with `args`, asserting it succeeds, and returns its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A RabbitMQ policy set for one test, cleared when dropped, so that a
/// failing test does not leave it to change the next run.
pub struct Policy {
    name: String,
}

impl Policy {
    /// Sets a policy with `definition` (JSON) on the queues whose names
    /// match `pattern`, named `<prefix>-<uuid>`.
    pub fn on_queues(prefix: &str, pattern: &str, definition: &str) -> Self {
        let name = format!("{prefix}-{}", uuid::Uuid::new_v4());
        rabbitmqctl(&[
            "set_policy",
            &name,
            pattern,
            definition,
            "--apply-to",
            "queues",
        ]);
        Policy { name }
    }

    /// Whether the broker applies this policy to `queue` now.
    pub fn applies_to(&self, queue: &str) -> bool {
        rabbitmqctl(&["list_queues", "-q", "name", "policy"])
            .lines()
            .any(|line| line.starts_with(queue) && line.contains(&self.name))
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        // Not `rabbitmqctl()`: a failure to clean up must not panic in a drop.
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["clear_policy", &self.name])
            .output();
    }
}

/// A broker user of one test's own, with every permission on the test
/// broker's vhost, deleted when dropped (even when the test fails), so that
/// taking its permissions away touches no other test.
pub struct BrokerUser {
    name: String,
    password: String,
    vhost: String,
}

impl BrokerUser {
    /// Creates `<prefix>-<uuid>` with a random password and grants it the vhost.
    pub fn create(prefix: &str) -> Self {
        let user = BrokerUser {
            name: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            password: uuid::Uuid::new_v4().simple().to_string(),
            vhost: parse_amqp_url(&crate::amqp_url()).vhost,
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        user.grant();
        user
    }

    /// The test broker's URL, logging in as this user.
    pub fn url(&self) -> String {
        let url = crate::amqp_url();
        let (scheme, rest) = url.split_once("://").expect("AMQP_URL has a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }

    /// Gives the user every permission on the vhost.
    pub fn grant(&self) {
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.vhost,
            &self.name,
            ".*",
            ".*",
            ".*",
        ]);
    }

    /// Takes the user's permissions away: its logins to the vhost are refused.
    pub fn revoke(&self) {
        rabbitmqctl(&["clear_permissions", "-p", &self.vhost, &self.name]);
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        // Not `rabbitmqctl()`: a failure to clean up must not panic in a drop.
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// `url` parsed as lapin (and so eda-worker) reads it: host, port, vhost.
pub fn parse_amqp_url(url: &str) -> lapin::uri::AMQPUri {
    url.parse().expect("AMQP_URL is a valid AMQP URL")
}

/// The RabbitMQ process id of the connection named `name`.
pub fn connection_pid(name: &str) -> Option<String> {
    rabbitmqctl(&["list_connections", "-q", "pid", "client_properties"])
        .lines()
        .find(|line| line.contains(&format!("\"{name}\"")))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

/// Has RabbitMQ close the connection whose process id is `pid`, as a broker
/// restart or a network cut would.
pub fn close_connection(pid: &str) {
    rabbitmqctl(&["close_connection", pid, "test: dropping the connection"]);
}

/// Waits until the connection named `name` is back with a process id other
/// than `old_pid`: its owner reconnected.
pub async fn wait_for_new_connection(name: &str, old_pid: &str) {
    crate::wait_until("the connection is back, a new one", crate::WAIT, || async {
        connection_pid(name).is_some_and(|pid| pid != old_pid)
    })
    .await;
}

/// A connection name no other test uses, for finding it in `rabbitmqctl`.
pub fn unique_connection_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}
