//! `bench`: eda-worker against raw lapin, on the same broker, in one run.
//!
//! ```text
//! cargo run --release -p eda-worker-bench --bin bench -- [--messages 200000] [--prefetch 256] [--concurrency 64] [--retry-messages 50000]
//! ```
//!
//! Every eda-worker figure is printed beside its raw lapin baseline with the
//! ratio. The drains run in child processes (this same binary), so each
//! reports its own peak RSS.

mod faults;
mod postgres;
mod raw;
mod report;
mod retries;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use eda_worker::prelude::*;
use eda_worker::{Worker, WorkerConfig, amqp_url_from_env};
use serde::{Deserialize as De, Serialize as Ser};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::raw::Format;
use crate::report::{Latencies, Row, Table};

/// The database when `DATABASE_URL` is not set.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Milliseconds since the Unix epoch.
fn now_millis() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Queue of the raw lapin baselines.
const RAW_QUEUE: &str = "eda-bench.raw";
/// Queue of the eda-worker figures.
const EDA_QUEUE: &str = "eda-bench.noop";
/// The topic exchange of the event publish figures, and its bound queues.
const EVENT_EXCHANGE: &str = "eda-bench.events";
const EVENT_QUEUES: [&str; 3] = [
    "eda-bench.events.a",
    "eda-bench.events.b",
    "eda-bench.events.c",
];
/// The bench event's routing key and wire name.
const EVENT_NAME: &str = "bench.event";

/// The bench event: the no-op job's payload, published to a topic exchange
/// with three bound queues.
#[derive(Debug, Clone, Ser, De, Event)]
#[event(exchange = "eda-bench.events", routing_key = "bench.event")]
pub struct Ping {
    /// A sequence number.
    pub n: u64,
    /// Some text.
    pub email: String,
}

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "eda-worker against raw lapin on the same broker"
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Clone, Args)]
struct Settings {
    /// Messages per throughput figure.
    #[arg(long, default_value_t = 200_000, global = true)]
    messages: u64,
    /// Concurrent publishers / enqueue callers.
    #[arg(long, default_value_t = 64, global = true)]
    publishers: usize,
    /// Alternating rounds of the publish figures (raw first, then eda first, ...).
    #[arg(long, default_value_t = 4, global = true)]
    rounds: u64,
    /// Alternating rounds of the drain figures.
    #[arg(long, default_value_t = 2, global = true)]
    drain_rounds: u64,
    /// Sequential publishes for the single-caller latency.
    #[arg(long, default_value_t = 2_000, global = true)]
    single: u64,
    /// Prefetch of each raw lapin consumer. eda-worker's drain, one consumer
    /// per queue, gets the window of all of them (`--raw-consumers` times
    /// this), so that both have as many unacked messages in flight.
    #[arg(long, default_value_t = 256, global = true)]
    prefetch: u16,
    /// Handlers in flight in the eda-worker drain.
    #[arg(long, default_value_t = 64, global = true)]
    concurrency: usize,
    /// Consumers of the raw lapin drains.
    #[arg(long, default_value_t = 2, global = true)]
    raw_consumers: usize,
    /// Multi-ack every this many messages in the raw lapin multi-ack drain.
    #[arg(long, default_value_t = 32, global = true)]
    ack_every: u64,
    /// Fail-once jobs in the retry throughput figure.
    #[arg(long, default_value_t = 50_000, global = true)]
    retry_messages: u64,
    /// Fail-once jobs per second in the retry lateness figure.
    #[arg(long, default_value_t = 1_000, global = true)]
    paced_rate: u64,
    /// Seconds of steady fail-once traffic in the retry lateness figure.
    #[arg(long, default_value_t = 10, global = true)]
    paced_seconds: u64,
    /// Raw commits and dedup'd jobs in the PostgreSQL figures.
    #[arg(long, default_value_t = 20_000, global = true)]
    db_jobs: u64,
    /// Outbox rows the relay drains.
    #[arg(long, default_value_t = 100_000, global = true)]
    relay_rows: u64,
    /// Commits timed one by one for the relay latency.
    #[arg(long, default_value_t = 200, global = true)]
    relay_latency_samples: u64,
    /// Forced connection closes in the reconnect figure.
    #[arg(long, default_value_t = 7, global = true)]
    reconnect_rounds: u64,
    /// Confirmed enqueues per listener in the TLS figure (on a node of the bench's own).
    #[arg(long, default_value_t = 40_000, global = true)]
    tls_messages: u64,
}

/// Child-process modes; the parent runs them and reads their last stdout line.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Drain the raw queue with lapin (one ack per message, or multi-acks).
    #[command(hide = true)]
    RawDrain {
        #[arg(long)]
        ack_every: u64,
        /// The queue to drain.
        #[arg(long, default_value = RAW_QUEUE)]
        queue: String,
    },
    /// Drain the eda-worker queue with a worker running no-op jobs.
    #[command(hide = true)]
    EdaDrain,
    /// The fail-once flow by hand with lapin, on the raw queue.
    #[command(hide = true)]
    RawFailOnce,
    /// Drain a backlog of fail-once jobs until every retry succeeded.
    #[command(hide = true)]
    EdaFailOnce,
    /// Run a worker while enqueueing fail-once jobs at a steady rate.
    #[command(hide = true)]
    EdaPacedRetries,
    /// Only the PostgreSQL figures (dedup'd jobs, relay), without baselines.
    #[command(hide = true)]
    Db,
    /// Enqueue `--retry-messages` fail-once jobs and stop.
    #[command(hide = true)]
    FillFailOnce,
    /// Enqueue `--messages` no-op jobs and stop (to profile a drain alone).
    #[command(hide = true)]
    Fill,
    /// Publish `--messages` raw messages and stop (to profile a drain alone).
    #[command(hide = true)]
    FillRaw,
    /// Only the publish figures (confirmed enqueue against raw lapin).
    #[command(hide = true)]
    Publish,
    /// Only the forced-close figure, `--reconnect-rounds` times.
    #[command(hide = true)]
    Reconnect,
}

/// One drain of the rotating rounds: what fills the queue, and who drains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Drain {
    /// eda-worker, of jobs enqueued through its client.
    Eda,
    /// eda-worker, of job messages in the old full format, published by hand.
    EdaOldFormat,
    /// raw lapin with multi-acks, of messages in this format.
    Raw(Format),
    /// raw lapin with one ack per message, of messages like eda-worker's.
    RawPerMessage,
}

/// What a drain child reports.
#[derive(Debug, Ser, De)]
struct DrainResult {
    messages: u64,
    /// From the start (before connecting) to the first delivery.
    startup_seconds: f64,
    /// From the first delivery to the last ack: the rate's time.
    seconds: f64,
    peak_rss_kb: u64,
    /// User + system CPU time of the child, in seconds.
    cpu_seconds: f64,
}

/// The no-op job's arguments: a typical small payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noop {
    /// A sequence number.
    pub n: u64,
    /// Some text, as a real job would carry.
    pub email: String,
}

static DONE: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static ALL_DONE: Notify = Notify::const_new();
static FIRST_JOB: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Does nothing but count.
#[job(queue = "eda-bench.noop", retries = 0)]
pub async fn noop(_ctx: JobContext, _args: Noop) -> Result<(), JobError> {
    let done = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    if done == 1 {
        let _ = FIRST_JOB.set(Instant::now());
    }
    if done == TARGET.load(Ordering::Relaxed) {
        ALL_DONE.notify_one();
    }
    Ok(())
}

fn payload(n: u64) -> Noop {
    Noop {
        n,
        email: format!("user{n}@example.com"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = cli.settings;
    match cli.mode {
        Some(Mode::RawDrain { ack_every, queue }) => {
            let result = raw::drain(
                &queue,
                settings.messages,
                settings.prefetch,
                settings.raw_consumers,
                ack_every,
            )
            .await?;
            println!("{}", serde_json::to_string(&finish(result))?);
            Ok(())
        }
        Some(Mode::EdaDrain) => {
            let drained = eda_drain(&settings).await?;
            println!("{}", serde_json::to_string(&finish(drained))?);
            Ok(())
        }
        Some(Mode::RawFailOnce) => {
            let admin = raw::Admin::connect(&amqp_url_from_env()).await?;
            let delay_queue = admin.declare_delay(RAW_QUEUE).await?;
            let (jobs, seconds) = raw::fail_once_drain(
                RAW_QUEUE,
                settings.retry_messages,
                settings.prefetch,
                &delay_queue,
            )
            .await?;
            let result = retries::RetryResult {
                jobs,
                seconds,
                lateness_ms: Vec::new(),
            };
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Some(Mode::EdaFailOnce) => {
            let result = retries::backlog(&settings).await?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Some(Mode::EdaPacedRetries) => {
            let result =
                retries::paced(&settings, settings.paced_rate, settings.paced_seconds).await?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Some(Mode::Db) => {
            let db = postgres::run(
                settings.db_jobs,
                settings.relay_rows,
                settings.relay_latency_samples,
            )
            .await?;
            println!(
                "raw commits {:.0}/s, dedup'd jobs {:.0}/s ({:.2}x), pool checkout p50 {:.3} ms p99 {:.3} ms (sqlx defaults: p50 {:.3} ms p99 {:.3} ms), relay {:.0} rows/s, relay latency p50 {:.2} ms p99 {:.2} ms",
                db.raw_commits.rate(),
                db.dedup_jobs_per_sec,
                db.dedup_jobs_per_sec / db.raw_commits.rate(),
                db.checkout.p(50.0),
                db.checkout.p(99.0),
                db.raw_checkout.p(50.0),
                db.raw_checkout.p(99.0),
                db.relay_rows_per_sec,
                db.relay_latency.p(50.0),
                db.relay_latency.p(99.0)
            );
            // Run alone, it leaves the broker as it found it.
            let admin = raw::Admin::connect(&amqp_url_from_env()).await?;
            let delays = retries::bench_delays();
            for queue in [postgres::DEDUP_QUEUE, postgres::RELAY_QUEUE] {
                admin.delete(queue).await?;
                admin.delete(&format!("{queue}.dlq")).await?;
                admin.delete_delays(queue, &delays).await?;
            }
            Ok(())
        }
        Some(Mode::FillFailOnce) => {
            let filled = retries::fill(settings.retry_messages, settings.publishers).await?;
            println!(
                "enqueued {} fail-once jobs at {:.0}/s",
                settings.retry_messages,
                filled.rate()
            );
            Ok(())
        }
        Some(Mode::Fill) => {
            let client = Client::connect(&amqp_url_from_env()).await?;
            let filled = eda_enqueue(&client, settings.messages, settings.publishers).await?;
            println!(
                "enqueued {} jobs at {:.0}/s",
                settings.messages,
                filled.rate()
            );
            client.close().await?;
            Ok(())
        }
        Some(Mode::FillRaw) => {
            let url = amqp_url_from_env();
            raw::Admin::connect(&url).await?.reset(RAW_QUEUE).await?;
            let filled = raw::publish(
                &url,
                RAW_QUEUE,
                settings.messages,
                settings.publishers,
                payload,
                Format::SameAsEda,
            )
            .await?;
            println!(
                "published {} messages at {:.0}/s",
                settings.messages,
                filled.rate()
            );
            Ok(())
        }
        Some(Mode::Publish) => {
            let url = amqp_url_from_env();
            let admin = raw::Admin::connect(&url).await?;
            admin.reset(RAW_QUEUE).await?;
            admin.reset(EDA_QUEUE).await?;
            let client = Client::connect(&url).await?;
            let mut table = Table::default();
            publish_figures(&settings, &client, &admin, &mut table).await?;
            println!("{table}");
            Ok(())
        }
        Some(Mode::Reconnect) => {
            let (eda, raw_floor) = faults::reconnect(settings.reconnect_rounds).await?;
            println!(
                "forced close to first job run again: p50 {:.1} ms, max {:.1} ms; raw lapin floor p50 {:.1} ms",
                eda.p(50.0),
                eda.p(100.0),
                raw_floor.p(50.0)
            );
            Ok(())
        }
        None => run_all(settings).await,
    }
}

impl Settings {
    /// The prefetch of eda-worker's one consumer: the unacked window of all
    /// the raw lapin consumers it is compared with.
    fn eda_prefetch(&self) -> u16 {
        let consumers = u16::try_from(self.raw_consumers.max(1)).unwrap_or(u16::MAX);
        self.prefetch.saturating_mul(consumers)
    }
}

impl DrainResult {
    /// Several drains as one: summed messages, time and CPU; the mean
    /// startup; the highest peak RSS.
    fn merge(runs: &[DrainResult]) -> DrainResult {
        DrainResult {
            messages: runs.iter().map(|run| run.messages).sum(),
            startup_seconds: runs.iter().map(|run| run.startup_seconds).sum::<f64>()
                / runs.len().max(1) as f64,
            seconds: runs.iter().map(|run| run.seconds).sum(),
            peak_rss_kb: runs.iter().map(|run| run.peak_rss_kb).max().unwrap_or(0),
            cpu_seconds: runs.iter().map(|run| run.cpu_seconds).sum(),
        }
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }

    fn cpu_per_message(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.messages as f64
    }
}

fn finish(drained: raw::Drained) -> DrainResult {
    DrainResult {
        messages: drained.messages,
        startup_seconds: drained.startup_seconds,
        seconds: drained.seconds,
        peak_rss_kb: peak_rss_kb(),
        cpu_seconds: cpu_seconds(),
    }
}

/// The publish rows: a single caller's latencies, then confirmed publishes
/// from `--publishers` callers in rotating rounds (eda-worker, raw lapin
/// with the same properties, raw lapin bare). Returns raw lapin's rate.
async fn publish_figures(
    settings: &Settings,
    client: &Client,
    admin: &raw::Admin,
    table: &mut Table,
) -> anyhow::Result<f64> {
    let url = amqp_url_from_env();
    let n = settings.messages;
    let same = Format::SameAsEda;
    // Single caller: latency of one confirmed publish at a time.
    let raw_single = raw::publish(&url, RAW_QUEUE, settings.single, 1, payload, same).await?;
    let eda_single = eda_enqueue(client, settings.single, 1).await?;
    admin.purge(RAW_QUEUE).await?;
    admin.purge(EDA_QUEUE).await?;

    // Publishing at concurrency, in rotating rounds (the broker slows as it
    // stores more, so whoever always went last would lose), into emptied
    // queues: eda-worker, raw lapin with the same properties, raw lapin bare.
    let rounds = settings.rounds.max(1);
    let per_round = (n / rounds).max(1);
    let mut raw_runs = Vec::new();
    let mut eda_runs = Vec::new();
    let mut bare_runs = Vec::new();
    for round in 0..rounds {
        for turn in 0..3 {
            match (turn + round) % 3 {
                0 => eda_runs.push(eda_enqueue(client, per_round, settings.publishers).await?),
                1 => raw_runs.push(
                    raw::publish(
                        &url,
                        RAW_QUEUE,
                        per_round,
                        settings.publishers,
                        payload,
                        same,
                    )
                    .await?,
                ),
                _ => bare_runs.push(
                    raw::publish(
                        &url,
                        RAW_QUEUE,
                        per_round,
                        settings.publishers,
                        payload,
                        Format::Bare,
                    )
                    .await?,
                ),
            }
            admin.purge(RAW_QUEUE).await?;
            admin.purge(EDA_QUEUE).await?;
        }
    }
    let raw_publish = Latencies::merge(raw_runs);
    let eda_publish = Latencies::merge(eda_runs);
    let bare_publish = Latencies::merge(bare_runs);
    let callers = settings.publishers;
    table.push(Row::throughput(
        &format!("confirmed publish, {callers} callers (msg/s)"),
        eda_publish.rate(),
        raw_publish.rate(),
    ));
    push_percentiles(table, "  ", &eda_publish, &raw_publish);
    table.push(Row::baseline(
        "  raw lapin, bare messages (msg/s)",
        bare_publish.rate(),
    ));
    push_percentiles(table, "single caller ", &eda_single, &raw_single);
    event_figures(settings, client, admin, table).await?;
    Ok(raw_publish.rate())
}

/// The event publish row: `client.publish` to a topic exchange with three
/// bound queues against raw lapin's confirmed publish of the same messages,
/// in rotating rounds into emptied queues.
async fn event_figures(
    settings: &Settings,
    client: &Client,
    admin: &raw::Admin,
    table: &mut Table,
) -> anyhow::Result<()> {
    let url = amqp_url_from_env();
    admin
        .topic_with_queues(EVENT_EXCHANGE, EVENT_NAME, &EVENT_QUEUES)
        .await?;
    let rounds = settings.rounds.max(1);
    let per_round = (settings.messages / rounds).max(1);
    let (mut eda_runs, mut raw_runs) = (Vec::new(), Vec::new());
    let target = raw::Target {
        exchange: EVENT_EXCHANGE,
        routing_key: EVENT_NAME,
    };
    for round in 0..rounds {
        for turn in 0..2 {
            if (turn + round) % 2 == 0 {
                let client = client.clone();
                eda_runs.push(
                    report::concurrently(per_round, settings.publishers, move |n| {
                        let client = client.clone();
                        async move {
                            let Noop { n, email } = payload(n);
                            let published = client.publish(Ping { n, email }).await?;
                            anyhow::ensure!(published.routed, "the bench event was not routed");
                            Ok(())
                        }
                    })
                    .await?,
                );
            } else {
                raw_runs.push(
                    raw::publish_to(
                        &url,
                        target,
                        per_round,
                        settings.publishers,
                        payload,
                        Format::Event,
                    )
                    .await?,
                );
            }
            for queue in EVENT_QUEUES {
                admin.purge(queue).await?;
            }
        }
    }
    admin.delete_topic(EVENT_EXCHANGE, &EVENT_QUEUES).await?;
    let (eda, raw) = (Latencies::merge(eda_runs), Latencies::merge(raw_runs));
    table.push(Row::throughput(
        &format!(
            "confirmed event publish to a topic exchange with 3 bound queues, {} callers (msg/s)",
            settings.publishers
        ),
        eda.rate(),
        raw.rate(),
    ));
    Ok(())
}

async fn run_all(settings: Settings) -> anyhow::Result<()> {
    let url = amqp_url_from_env();
    let n = settings.messages;
    println!(
        "bench: {n} messages, {} publishers, prefetch {} per raw consumer and {} for eda-worker's, eda concurrency {}, raw consumers {}, raw ack every {}",
        settings.publishers,
        settings.prefetch,
        settings.eda_prefetch(),
        settings.concurrency,
        settings.raw_consumers,
        settings.ack_every
    );
    let admin = raw::Admin::connect(&url).await?;
    admin.reset(RAW_QUEUE).await?;
    admin.reset(EDA_QUEUE).await?;
    let client = Client::connect(&url).await?;
    let mut table = Table::default();
    let same = Format::SameAsEda;

    let raw_publish_rate = publish_figures(&settings, &client, &admin, &mut table).await?;
    let callers = settings.publishers;

    // Draining: each drain reads a backlog of n messages published just
    // before it (untimed), so that every drain finds the broker in the same
    // state; every round runs each drain once, starting one further along.
    let ack_every = settings.ack_every.to_string();
    let drains = [
        Drain::Eda,
        Drain::Raw(same),
        Drain::Raw(Format::Bare),
        Drain::EdaOldFormat,
        Drain::RawPerMessage,
        Drain::Raw(Format::LongId),
        Drain::Raw(Format::LeanWithHeader),
        Drain::Raw(Format::OldFull),
    ];
    let mut results: HashMap<Drain, Vec<DrainResult>> = HashMap::new();
    for round in 0..settings.drain_rounds.max(1) {
        for turn in 0..drains.len() {
            let drain = drains[(turn + usize::try_from(round)?) % drains.len()];
            let (fill_queue, format) = match drain {
                Drain::Eda => (EDA_QUEUE, None),
                Drain::EdaOldFormat => (EDA_QUEUE, Some(Format::OldFull)),
                Drain::Raw(format) => (RAW_QUEUE, Some(format)),
                Drain::RawPerMessage => (RAW_QUEUE, Some(same)),
            };
            match format {
                None => drop(eda_enqueue(&client, n, settings.publishers).await?),
                Some(format) => drop(
                    raw::publish(&url, fill_queue, n, settings.publishers, payload, format).await?,
                ),
            }
            let child: &[&str] = match drain {
                Drain::Eda | Drain::EdaOldFormat => &["eda-drain"],
                Drain::Raw(_) => &["raw-drain", "--ack-every", &ack_every],
                Drain::RawPerMessage => &["raw-drain", "--ack-every", "1"],
            };
            let result = drain_child(&settings, child).await?;
            results.entry(drain).or_default().push(result);
        }
    }
    let merged = |drain: Drain| DrainResult::merge(results.get(&drain).map_or(&[], Vec::as_slice));
    let eda = merged(Drain::Eda);
    let multi = merged(Drain::Raw(same));
    let bare = merged(Drain::Raw(Format::Bare));
    let eda_old = merged(Drain::EdaOldFormat);
    let every = settings.ack_every;
    table.push(Row::throughput(
        &format!("drain no-op jobs vs raw lapin, same properties, multi-ack every {every} (msg/s)"),
        eda.rate(),
        multi.rate(),
    ));
    table.push(Row::latency(
        "  client CPU per message (us)",
        eda.cpu_per_message(),
        multi.cpu_per_message(),
    ));
    table.push(Row::memory(
        "  peak RSS (MB)",
        eda.peak_rss_kb,
        multi.peak_rss_kb,
    ));
    table.push(Row::latency(
        "  start to first delivery, not in the rate (ms)",
        eda.startup_seconds * 1e3,
        multi.startup_seconds * 1e3,
    ));
    table.push(Row::throughput(
        &format!("drain no-op jobs vs raw lapin, bare messages, multi-ack every {every} (msg/s)"),
        eda.rate(),
        bare.rate(),
    ));
    table.push(Row::throughput(
        "drain of the old full format by eda-worker vs by raw lapin (msg/s)",
        eda_old.rate(),
        merged(Drain::Raw(Format::OldFull)).rate(),
    ));
    table.push(Row::baseline(
        "  raw lapin, same properties, per-message acks (msg/s)",
        merged(Drain::RawPerMessage).rate(),
    ));
    for format in Format::ALL {
        table.push(Row::baseline(
            &format!(
                "  raw lapin drain, {} bytes of properties: {} (msg/s)",
                format.encoded_size(),
                format.describe()
            ),
            merged(Drain::Raw(format)).rate(),
        ));
    }

    // The failure path: fail once, succeed on the retry 1 s later.
    let delays = retries::bench_delays();
    admin.reset(retries::FAIL_ONCE_QUEUE).await?;
    admin
        .delete_delays(retries::FAIL_ONCE_QUEUE, &delays)
        .await?;
    admin.delete_delays(RAW_QUEUE, &delays).await?;
    let retry_jobs = settings.retry_messages;
    retries::fill(retry_jobs, settings.publishers).await?;
    let backlog: retries::RetryResult = child_json(&settings, &["eda-fail-once"]).await?;
    // The same flow by hand: the same messages, through the same delay queue.
    admin.purge(RAW_QUEUE).await?;
    raw::publish(
        &url,
        RAW_QUEUE,
        retry_jobs,
        settings.publishers,
        payload,
        same,
    )
    .await?;
    let raw_backlog: retries::RetryResult = child_json(&settings, &["raw-fail-once"]).await?;
    let paced: retries::RetryResult = child_json(&settings, &["eda-paced-retries"]).await?;
    table.push(Row::throughput(
        &format!("fail once, succeed 1 s later, {retry_jobs} jobs (jobs/s)"),
        backlog.rate(),
        raw_backlog.rate(),
    ));
    let paced_rate = settings.paced_rate;
    for percentile in [50.0, 99.0] {
        table.push(Row::eda_only(
            &format!("  retry lateness at {paced_rate} jobs/s, p{percentile} (ms)"),
            paced.lateness(percentile),
        ));
    }
    table.push(Row::eda_only(
        &format!("  retry lateness at {paced_rate} jobs/s, max (ms)"),
        paced.lateness(100.0),
    ));
    table.push(Row::eda_only(
        "  retry lateness in the backlog, p50 (ms)",
        backlog.lateness(50.0),
    ));

    // Broker faults: a forced close, and TLS on a node of the bench's own.
    let (eda_reconnect, raw_floor) = faults::reconnect(settings.reconnect_rounds).await?;
    for percentile in [50.0, 100.0] {
        let label = if percentile == 100.0 {
            "max".to_owned()
        } else {
            format!("p{percentile}")
        };
        table.push(Row::latency(
            &format!("forced connection close to first job run again, {label} (ms), vs raw lapin connect+consume to first delivery"),
            eda_reconnect.p(percentile),
            raw_floor.p(percentile),
        ));
    }
    let (amqps, amqp, raw_amqps) =
        faults::tls_enqueue(settings.tls_messages, settings.publishers, 2).await?;
    table.push(Row::throughput(
        &format!("confirmed enqueue over amqps://, {callers} callers (msg/s)"),
        amqps.rate(),
        raw_amqps.rate(),
    ));
    table.push(Row::baseline(
        "  eda-worker over amqp:// on the same node (msg/s)",
        amqp.rate(),
    ));

    // PostgreSQL: the inbox in the handler's transaction, and the outbox relay.
    let db = postgres::run(
        settings.db_jobs,
        settings.relay_rows,
        settings.relay_latency_samples,
    )
    .await?;
    table.push(Row::throughput(
        "dedup'd no-op jobs, concurrency 16, vs raw INSERT ON CONFLICT commits (jobs/s)",
        db.dedup_jobs_per_sec,
        db.raw_commits.rate(),
    ));
    for percentile in [50.0, 99.0] {
        table.push(Row::latency(
            &format!("  pool checkout, 16 at a time, vs sqlx's defaults, p{percentile} (ms)"),
            db.checkout.p(percentile),
            db.raw_checkout.p(percentile),
        ));
    }
    table.push(Row::throughput(
        &format!(
            "outbox relay, {} rows, vs raw confirmed publish (msg/s)",
            settings.relay_rows
        ),
        db.relay_rows_per_sec,
        raw_publish_rate,
    ));
    for percentile in [50.0, 99.0] {
        table.push(Row::eda_only(
            &format!("  relay latency, commit to consumer, idle, p{percentile} (ms)"),
            db.relay_latency.p(percentile),
        ));
    }

    client.close().await?;
    // Leaves the broker as it found it: every queue this run declared, gone.
    for queue in [
        RAW_QUEUE,
        EDA_QUEUE,
        retries::FAIL_ONCE_QUEUE,
        postgres::DEDUP_QUEUE,
        postgres::RELAY_QUEUE,
    ] {
        admin.delete(queue).await?;
        admin.delete(&format!("{queue}.dlq")).await?;
        admin.delete_delays(queue, &delays).await?;
    }
    println!("{table}");
    println!(
        "fail-once throughput relative to the no-op drain of this run: {:.2}x (target: at least 0.3x; each such job costs two deliveries and a confirmed delay publish)",
        backlog.rate() / eda.rate()
    );
    println!(
        "confirmed enqueue over amqps:// relative to amqp:// on the same TLS node: {:.2}x (target: at least 0.8x); forced close to first job run again: p50 {:.0} ms (target: under 1000 ms)",
        amqps.rate() / amqp.rate(),
        eda_reconnect.p(50.0)
    );
    println!(
        "drain targets: vs raw lapin with the same properties {:.2}x (at least 0.95x), vs bare messages {:.2}x (at least 0.9x), \
         client CPU per message {:.2}x (at least 0.8x); the old full format drains at {:.2}x of the lean one",
        eda.rate() / multi.rate(),
        eda.rate() / bare.rate(),
        multi.cpu_per_message() / eda.cpu_per_message(),
        eda_old.rate() / eda.rate()
    );
    println!(
        "raw lapin publishes and drains the same messages as eda-worker (same properties, set by hand); \
         'bare' rows carry only content_type and delivery_mode; the property-size rows show what the \
         size of the properties costs the broker"
    );
    Ok(())
}

/// `count` enqueues from `callers` concurrent tasks sharing one client.
async fn eda_enqueue(client: &Client, count: u64, callers: usize) -> anyhow::Result<Latencies> {
    let client = client.clone();
    report::concurrently(count, callers, move |n| {
        let client = client.clone();
        async move {
            client.enqueue(noop, payload(n)).await?;
            Ok(())
        }
    })
    .await
}

/// Runs a worker until `messages` no-op jobs ran, then stops it gracefully.
/// Its drain time runs from the first job to the end of the stop, which
/// flushes the last acks; the startup (connecting, declaring the queue's
/// topology) is reported on its own.
async fn eda_drain(settings: &Settings) -> anyhow::Result<raw::Drained> {
    // As the `worker` command runs: its logs on, at info.
    eda_worker::cli::init_tracing();
    TARGET.store(settings.messages, Ordering::Relaxed);
    let config = WorkerConfig::new(amqp_url_from_env())
        .queues([EDA_QUEUE])
        .prefetch(settings.eda_prefetch())
        .concurrency(settings.concurrency);
    let worker = Worker::new(config)?;
    let token = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(token.clone()));
    if tokio::time::timeout(Duration::from_secs(600), ALL_DONE.notified())
        .await
        .is_err()
    {
        token.cancel();
        bail!(
            "only {} of {} jobs ran within 10 minutes",
            DONE.load(Ordering::Relaxed),
            settings.messages
        );
    }
    token.cancel();
    running.await.context("worker task")??;
    let first = *FIRST_JOB.get().context("no job ran")?;
    Ok(raw::Drained {
        messages: DONE.load(Ordering::Relaxed),
        startup_seconds: first.duration_since(started).as_secs_f64(),
        seconds: first.elapsed().as_secs_f64(),
    })
}

/// Runs this binary in a drain mode and reads its result.
async fn drain_child(settings: &Settings, mode: &[&str]) -> anyhow::Result<DrainResult> {
    child_json(settings, mode).await
}

/// Runs this binary in a child `mode` and parses the JSON of its last stdout line.
async fn child_json<T: serde::de::DeserializeOwned>(
    settings: &Settings,
    mode: &[&str],
) -> anyhow::Result<T> {
    let exe = std::env::current_exe()?;
    let output = tokio::process::Command::new(exe)
        .args(mode)
        .args(["--messages", &settings.messages.to_string()])
        .args(["--prefetch", &settings.prefetch.to_string()])
        .args(["--concurrency", &settings.concurrency.to_string()])
        .args(["--raw-consumers", &settings.raw_consumers.to_string()])
        .args(["--retry-messages", &settings.retry_messages.to_string()])
        .args(["--paced-rate", &settings.paced_rate.to_string()])
        .args(["--paced-seconds", &settings.paced_seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !output.status.success() {
        bail!("child {mode:?} failed with {}", output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout.lines().last().context("child printed nothing")?;
    Ok(serde_json::from_str(last)?)
}

/// User + system CPU time of this process so far (from /proc/self/stat, in clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size of this process (VmHWM), in kB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The p50 and p99 latency rows of two runs, labelled `{prefix}p50 latency (ms)`.
fn push_percentiles(table: &mut Table, prefix: &str, eda: &Latencies, raw: &Latencies) {
    for percentile in [50.0, 99.0] {
        table.push(Row::latency(
            &format!("{prefix}p{percentile} latency (ms)"),
            eda.p(percentile),
            raw.p(percentile),
        ));
    }
}
