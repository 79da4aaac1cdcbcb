//! Shared harness of the integration tests: test jobs (each test has its own
//! queue), broker inspection with raw lapin, and bounded waits.
//!
//! Every test deletes its queues before and after it runs, so a crashed
//! earlier run cannot leave messages that change the outcome.

pub mod jobs;

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use eda_worker::amqp_url_from_env as amqp_url;
use eda_worker::{DelayQueues, Worker, WorkerConfig};

/// The longest any test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(30);

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

    /// Deletes `queue`, its dead-letter queue and its delay queues (the
    /// default set, and the 200 ms one a test adds), so a test starts clean.
    pub async fn reset(&self, queue: &str) {
        for name in [queue.to_owned(), format!("{queue}.dlq")] {
            self.delete_queue(&name).await;
        }
        let extra = DelayQueues::new([Duration::from_millis(200)]).expect("valid delays");
        for delays in [DelayQueues::default(), extra] {
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

    /// Empties `queue`.
    pub async fn purge(&self, queue: &str) {
        self.channel()
            .await
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }

    /// Deletes the queues and closes the connection.
    pub async fn cleanup(self, queue: &str) {
        self.reset(queue).await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Waits until `condition` holds, polling, for at most `timeout`; panics
/// with `what` when it never does.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker running in this process, stopped with its token.
pub struct RunningWorker {
    /// Cancel to stop the worker gracefully.
    pub token: CancellationToken,
    task: JoinHandle<Result<(), eda_worker::Error>>,
}

impl RunningWorker {
    /// Starts a worker on `queue` with `config`'s settings, and waits until it consumes.
    pub async fn start(broker: &Broker, queue: &str, config: WorkerConfig) -> Self {
        let token = CancellationToken::new();
        let worker = Worker::new(config.queues([queue])).expect("worker configuration");
        let task = tokio::spawn(worker.run(token.clone()));
        wait_until("the worker consumes", WAIT, || async {
            broker.consumers(queue).await > 0
        })
        .await;
        RunningWorker { token, task }
    }

    /// True while the worker runs.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the worker gracefully and returns how it ended.
    pub async fn stop(self) -> Result<(), eda_worker::Error> {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops in time")
            .expect("worker task")
    }
}

/// Worker settings for tests: the test broker, short shutdown timeout.
pub fn worker_config() -> WorkerConfig {
    WorkerConfig::new(amqp_url()).shutdown_timeout(Duration::from_secs(10))
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

/// The test database on this machine, used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds fit in u64")
}

/// `DATABASE_URL`, or the test database on this machine.
pub fn database_url() -> String {
    eda_worker::postgres::database_url_from_env().unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// A connection to the test database whose eda-worker schema is `schema`,
/// dropped first so that the test starts clean (and not yet migrated).
pub async fn fresh_database(schema: &str) -> eda_worker::postgres::Database {
    let schema = eda_worker::postgres::Schema::new(schema).expect("valid schema name");
    let database = eda_worker::postgres::Database::connect(&database_url(), schema)
        .await
        .expect("PostgreSQL must run for the integration tests (see .ci/run)");
    drop_schema(&database).await;
    database
}

/// Drops the database's eda-worker schema and everything in it.
pub async fn drop_schema(database: &eda_worker::postgres::Database) {
    let statement = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", database.schema());
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(database.pool())
        .await
        .expect("drop schema");
}
