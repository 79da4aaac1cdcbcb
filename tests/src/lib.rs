//! Shared harness of the integration tests, which run against the real
//! RabbitMQ and PostgreSQL: a [`Scene`] that sets a test up and tears it
//! down, broker inspection with raw lapin, test databases, bounded waits,
//! the `test-worker` subprocess, and the test jobs (each test has its own
//! queue, read from its job: `<flaky as Job>::QUEUE`).
//!
//! Every test deletes its queues (and drops its schema) before and after it
//! runs, so a crashed earlier run cannot leave state that changes the outcome.

#![warn(missing_docs)]

pub mod broker;
pub mod certificates;
pub mod database;
pub mod jobs;
pub mod node;
pub mod outbox;
pub mod postgres_node;
pub mod process;
pub mod proxy;
pub mod scene;
pub mod wait;

pub use broker::{Broker, close_connection, connection_pid, rabbitmqctl};
pub use eda_worker::amqp_url_from_env as amqp_url;
pub use scene::{Scene, SceneBuilder};
pub use wait::{WAIT, wait_until};

/// The dead-letter tooling, as the tests use it.
pub use eda_worker::dead_letter::{DeadLetter, DeadLetters, Replay};

/// Worker settings for tests: the test broker, a short shutdown timeout.
pub fn worker_config() -> eda_worker::WorkerConfig {
    eda_worker::WorkerConfig::new(amqp_url()).shutdown_timeout(std::time::Duration::from_secs(10))
}

/// Milliseconds since the Unix epoch, as the `x-eda-*` time headers count.
pub fn now_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since_epoch.as_millis()).expect("milliseconds fit in u64")
}
