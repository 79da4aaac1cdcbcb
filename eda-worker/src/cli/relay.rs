//! `worker relay`: publish the outbox until SIGTERM or SIGINT, without
//! consuming jobs.

use std::time::Duration;

use clap::Args;

use super::broker::BrokerArgs;
use super::database::DatabaseArgs;
use super::run::delay_queues;
use super::signals::until_stopped;
use crate::outbox::Relay;

#[derive(Debug, Args)]
pub(super) struct RelayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    /// TTLs of the delay queues scheduled rows go through; the same as the
    /// workers' (default: 100ms,250ms,500ms,1s,2s,5s,10s,30s,1m,5m,15m,1h).
    #[arg(long, env = "EDA_DELAY_BUCKETS", value_delimiter = ',', value_parser = humantime::parse_duration)]
    delay_buckets: Vec<Duration>,
}

pub(super) async fn relay(args: RelayArgs) -> Result<(), crate::Error> {
    let delays = delay_queues(args.delay_buckets)?;
    let database = args.database.require("worker relay").await?;
    database.check_migrated().await?;
    let relay = Relay::new(database, args.broker.amqp_url.clone())
        .tls(args.broker.tls())
        .delay_queues(delays);
    until_stopped("relay", |token| relay.run(token)).await
}
