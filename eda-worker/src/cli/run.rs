//! `worker run`: consume the job queues until SIGTERM or SIGINT.

use std::time::Duration;

use clap::Args;

use super::broker::BrokerArgs;
use super::database::DatabaseArgs;
use super::signals::until_stopped;
use crate::config::{
    DEFAULT_CONCURRENCY, DEFAULT_CONNECT_ATTEMPTS, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_STARTS,
};
use crate::retry::DEFAULT_DELAY_BUCKETS;
use crate::{DelayQueues, Registry, Worker, WorkerConfig};

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Apply eda-worker's migrations at start (needs a database).
    #[arg(long, env = "EDA_MIGRATE")]
    migrate: bool,
    /// Do not run the outbox relay inside the worker (run `worker relay` instead).
    #[arg(long, env = "EDA_NO_RELAY")]
    no_relay: bool,
    /// Most database connections this worker opens (default: concurrency x
    /// queues + the relay's and the pruner's). Smaller, jobs wait for one.
    #[arg(long, env = "EDA_DB_POOL_SIZE")]
    db_pool_size: Option<u32>,
    /// Starts without a finish (the worker died each time) after which a
    /// redelivered message is dead-lettered instead of run; needs a database. 0: no limit.
    #[arg(long, env = "EDA_MAX_STARTS", default_value_t = DEFAULT_MAX_STARTS)]
    max_starts: u32,
    /// How long processed message ids stay in the inbox, e.g. 7d.
    #[arg(long, env = "EDA_INBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    inbox_retention: Duration,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Queues to consume, comma-separated (default: every queue a job uses).
    #[arg(long, env = "EDA_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Handlers in flight per queue.
    #[arg(long, env = "EDA_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Unacked messages per queue (default: 4 x concurrency).
    #[arg(long, env = "EDA_PREFETCH")]
    prefetch: Option<u16>,
    /// How long running jobs may finish after a stop signal, e.g. 30s, 2m.
    #[arg(long, env = "EDA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Connection attempts before giving up.
    #[arg(long, env = "EDA_CONNECT_ATTEMPTS", default_value_t = DEFAULT_CONNECT_ATTEMPTS)]
    connect_attempts: usize,
    /// Larger messages (in bytes) are dead-lettered without running.
    #[arg(long, env = "EDA_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
    /// The broker's consumer_timeout (rabbitmq.conf), to warn about longer jobs.
    #[arg(long, env = "EDA_CONSUMER_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    consumer_timeout: Duration,
    /// How far ahead a message may be due; one due further ahead is dead-lettered, e.g. 366d.
    #[arg(long, env = "EDA_ETA_HORIZON", default_value = "366d", value_parser = humantime::parse_duration)]
    eta_horizon: Duration,
    /// TTLs of each job queue's delay queues, comma-separated (default: 100ms,250ms,500ms,1s,2s,5s,10s,30s,1m,5m,15m,1h).
    #[arg(long, env = "EDA_DELAY_BUCKETS", value_delimiter = ',', value_parser = humantime::parse_duration)]
    delay_buckets: Vec<Duration>,
}

impl RunArgs {
    /// The worker's settings, and where its database is (connected by the caller).
    fn into_config(self) -> Result<(WorkerConfig, DatabaseArgs), crate::Error> {
        let delays = delay_queues(self.delay_buckets)?;
        let tls = self.broker.tls();
        let mut config = WorkerConfig::new(self.broker.amqp_url)
            .tls(tls)
            .queues(
                self.queues
                    .into_iter()
                    .filter(|queue| !queue.trim().is_empty()),
            )
            .concurrency(self.concurrency)
            .shutdown_timeout(self.shutdown_timeout)
            .connect_attempts(self.connect_attempts)
            .max_message_size(self.max_message_size)
            .consumer_timeout(self.consumer_timeout)
            .eta_horizon(self.eta_horizon)
            .delay_queues(delays)
            .inbox_retention(self.inbox_retention)
            .max_starts(self.max_starts);
        config.prefetch = self.prefetch;
        Ok((config, self.database))
    }
}

pub(super) async fn run(args: RunArgs) -> Result<(), crate::Error> {
    let (migrate, relay, pool) = (args.migrate, !args.no_relay, args.db_pool_size);
    let (mut config, database) = args.into_config()?;
    config = config.relay(relay);
    let queues = if config.queues.is_empty() {
        Registry::from_linked_jobs()?.queues().len()
    } else {
        config.queues.len()
    };
    let pool_size =
        pool.unwrap_or_else(|| crate::postgres::pool_size(config.concurrency, queues, relay));
    match database.connect_with_pool_size(pool_size).await? {
        Some(database) => config = config.database(database).migrate_on_start(migrate),
        None if migrate => {
            return Err(crate::Error::Config(
                "--migrate needs a database: set DATABASE_URL or pass --database-url".into(),
            ));
        }
        None => tracing::info!("no DATABASE_URL: jobs run without dedup, and ctx.tx() is an error"),
    }
    let worker = Worker::new(config)?;
    let result = until_stopped("worker", |token| {
        tracing::info!(queues = ?worker.queues(), "worker starting");
        worker.run(token)
    })
    .await;
    if result.is_ok() {
        tracing::info!("worker stopped");
    }
    result
}

/// The delay queues of `--delay-buckets` (the defaults when none are given).
pub(super) fn delay_queues(buckets: Vec<Duration>) -> Result<DelayQueues, crate::Error> {
    if buckets.is_empty() {
        DelayQueues::new(DEFAULT_DELAY_BUCKETS.to_vec())
    } else {
        DelayQueues::new(buckets)
    }
}
