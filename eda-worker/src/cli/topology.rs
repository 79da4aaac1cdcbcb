//! `worker topology declare`: every exchange, queue, binding, delay queue
//! and dead-letter queue the registered jobs need, declared before the
//! first worker starts (a deploy step).

use std::time::Duration;

use clap::{Args, Subcommand};

use super::broker::BrokerArgs;
use super::run::delay_queues;
use crate::config::DEFAULT_CONNECT_ATTEMPTS;
use crate::{Worker, WorkerConfig};

#[derive(Debug, Subcommand)]
pub(super) enum TopologyCommand {
    /// Declare every exchange, queue, binding, delay queue and dead-letter
    /// queue the registered jobs need, and exit.
    Declare(DeclareArgs),
}

#[derive(Debug, Args)]
pub(super) struct DeclareArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Queues to declare, comma-separated (default: every queue a job uses).
    #[arg(long, env = "EDA_QUEUES", value_delimiter = ',')]
    queues: Vec<String>,
    /// Connection attempts before giving up.
    #[arg(long, env = "EDA_CONNECT_ATTEMPTS", default_value_t = DEFAULT_CONNECT_ATTEMPTS)]
    connect_attempts: usize,
    /// TTLs of each job queue's delay queues, comma-separated, as `worker run` takes them.
    #[arg(long, env = "EDA_DELAY_BUCKETS", value_delimiter = ',', value_parser = humantime::parse_duration)]
    delay_buckets: Vec<Duration>,
}

pub(super) async fn run(command: TopologyCommand) -> Result<(), crate::Error> {
    let TopologyCommand::Declare(args) = command;
    let config = WorkerConfig::new(args.broker.amqp_url.clone())
        .tls(args.broker.tls())
        .queues(
            args.queues
                .into_iter()
                .filter(|queue| !queue.trim().is_empty()),
        )
        .connect_attempts(args.connect_attempts)
        .delay_queues(delay_queues(args.delay_buckets)?);
    for queue in Worker::declare_topology(config).await? {
        println!("declared {queue}");
    }
    Ok(())
}
