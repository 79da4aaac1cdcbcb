//! `bench`: eda-worker against raw lapin, on the same broker, in one run.
//!
//! ```text
//! cargo run --release -p eda-worker-bench --bin bench -- [--messages 200000] [--prefetch 256] [--concurrency 64]
//! ```
//!
//! Every eda-worker figure is printed beside its raw lapin baseline with the
//! ratio. The drains run in child processes (this same binary), so each
//! reports its own peak RSS.

mod raw;
mod report;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use eda_worker::prelude::*;
use eda_worker::{Worker, WorkerConfig, amqp_url_from_env};
use serde::{Deserialize as De, Serialize as Ser};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::report::{Latencies, Row, Table};

/// Queue of the raw lapin baselines.
const RAW_QUEUE: &str = "eda-bench.raw";
/// Queue of the eda-worker figures.
const EDA_QUEUE: &str = "eda-bench.noop";

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
    /// Sequential publishes for the single-caller latency.
    #[arg(long, default_value_t = 2_000, global = true)]
    single: u64,
    /// Prefetch of every drain.
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
}

/// Child-process modes; the parent runs them and reads their last stdout line.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Drain the raw queue with lapin (one ack per message, or multi-acks).
    #[command(hide = true)]
    RawDrain {
        #[arg(long)]
        ack_every: u64,
    },
    /// Drain the eda-worker queue with a worker running no-op jobs.
    #[command(hide = true)]
    EdaDrain,
}

/// What a drain child reports.
#[derive(Debug, Ser, De)]
struct DrainResult {
    messages: u64,
    seconds: f64,
    peak_rss_kb: u64,
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

/// Does nothing but count.
#[job(queue = "eda-bench.noop", retries = 0)]
pub async fn noop(_ctx: JobContext, _args: Noop) -> Result<(), JobError> {
    if DONE.fetch_add(1, Ordering::Relaxed) + 1 == TARGET.load(Ordering::Relaxed) {
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
        Some(Mode::RawDrain { ack_every }) => {
            let result = raw::drain(
                RAW_QUEUE,
                settings.messages,
                settings.prefetch,
                settings.raw_consumers,
                ack_every,
            )
            .await?;
            println!("{}", serde_json::to_string(&finish(result.0, result.1))?);
            Ok(())
        }
        Some(Mode::EdaDrain) => {
            let (messages, seconds) = eda_drain(&settings).await?;
            println!("{}", serde_json::to_string(&finish(messages, seconds))?);
            Ok(())
        }
        None => run_all(settings).await,
    }
}

fn finish(messages: u64, seconds: f64) -> DrainResult {
    DrainResult {
        messages,
        seconds,
        peak_rss_kb: peak_rss_kb(),
    }
}

async fn run_all(settings: Settings) -> anyhow::Result<()> {
    let url = amqp_url_from_env();
    let n = settings.messages;
    println!(
        "bench: {n} messages, {} publishers, prefetch {}, eda concurrency {}, raw consumers {}, raw ack every {}",
        settings.publishers,
        settings.prefetch,
        settings.concurrency,
        settings.raw_consumers,
        settings.ack_every
    );
    let admin = raw::Admin::connect(&url).await?;
    admin.reset(RAW_QUEUE).await?;
    admin.reset(EDA_QUEUE).await?;
    let mut table = Table::default();

    // Single caller: latency of one confirmed publish at a time. Then both queues
    // are emptied, so each holds exactly the `n` messages published next.
    let raw_single = raw::publish(&url, RAW_QUEUE, settings.single, 1, payload).await?;
    let client = Client::connect(&url).await?;
    let eda_single = eda_enqueue(&client, settings.single, 1).await?;
    admin.purge(RAW_QUEUE).await?;
    admin.purge(EDA_QUEUE).await?;

    // Publishing: raw lapin confirmed publish vs enqueue, same concurrency and payload,
    // in alternating rounds (the broker slows as it stores more, so whoever went
    // second would lose), each round into emptied queues.
    let rounds = settings.rounds.max(1);
    let per_round = (n / rounds).max(1);
    let mut raw_samples = Vec::new();
    let mut eda_samples = Vec::new();
    for round in 0..rounds {
        if round % 2 == 0 {
            raw_samples.push(
                raw::publish(&url, RAW_QUEUE, per_round, settings.publishers, payload).await?,
            );
            eda_samples.push(eda_enqueue(&client, per_round, settings.publishers).await?);
        } else {
            eda_samples.push(eda_enqueue(&client, per_round, settings.publishers).await?);
            raw_samples.push(
                raw::publish(&url, RAW_QUEUE, per_round, settings.publishers, payload).await?,
            );
        }
        admin.purge(RAW_QUEUE).await?;
        admin.purge(EDA_QUEUE).await?;
    }
    let raw_publish = Latencies::merge(raw_samples);
    let eda_publish = Latencies::merge(eda_samples);
    table.push(Row::throughput(
        &format!("confirmed publish, {} callers (msg/s)", settings.publishers),
        eda_publish.rate(),
        raw_publish.rate(),
    ));
    table.push(Row::latency(
        "  p50 latency at that concurrency (ms)",
        eda_publish.p(50.0),
        raw_publish.p(50.0),
    ));
    table.push(Row::latency(
        "  p99 latency at that concurrency (ms)",
        eda_publish.p(99.0),
        raw_publish.p(99.0),
    ));
    table.push(Row::latency(
        "single caller p50 latency (ms)",
        eda_single.p(50.0),
        raw_single.p(50.0),
    ));
    table.push(Row::latency(
        "single caller p99 latency (ms)",
        eda_single.p(99.0),
        raw_single.p(99.0),
    ));

    // Draining: backlogs of n messages, published untimed.
    eda_enqueue(&client, n, settings.publishers).await?;
    raw::publish(&url, RAW_QUEUE, n, settings.publishers, payload).await?;
    let per_message = drain_child(&settings, &["raw-drain", "--ack-every", "1"]).await?;
    raw::publish(&url, RAW_QUEUE, n, settings.publishers, payload).await?;
    let multi = drain_child(
        &settings,
        &["raw-drain", "--ack-every", &settings.ack_every.to_string()],
    )
    .await?;
    let eda = drain_child(&settings, &["eda-drain"]).await?;
    let rate = |result: &DrainResult| result.messages as f64 / result.seconds;
    table.push(Row::baseline(
        "drain, raw per-message acks (msg/s)",
        rate(&per_message),
    ));
    table.push(Row::throughput(
        &format!(
            "drain no-op jobs vs raw multi-ack every {} (msg/s)",
            settings.ack_every
        ),
        rate(&eda),
        rate(&multi),
    ));
    table.push(Row::memory(
        "drain peak RSS (MB)",
        eda.peak_rss_kb,
        multi.peak_rss_kb,
    ));

    client.close().await?;
    admin.reset(RAW_QUEUE).await?;
    admin.reset(EDA_QUEUE).await?;
    println!("{table}");
    Ok(())
}

/// `count` enqueues from `callers` concurrent tasks sharing one client.
async fn eda_enqueue(client: &Client, count: u64, callers: usize) -> anyhow::Result<Latencies> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, eda_worker::Error>(samples);
                }
                let sent = Instant::now();
                client.enqueue(noop, payload(n)).await?;
                samples.push(sent.elapsed());
            }
        });
    }
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("enqueue task")??);
    }
    Ok(Latencies::new(samples, started.elapsed()))
}

/// Runs a worker until `messages` no-op jobs ran, then stops it gracefully.
async fn eda_drain(settings: &Settings) -> anyhow::Result<(u64, f64)> {
    TARGET.store(settings.messages, Ordering::Relaxed);
    let config = WorkerConfig::new(amqp_url_from_env())
        .queues([EDA_QUEUE])
        .prefetch(settings.prefetch)
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
    // Stopping flushes the last acks: the figure includes them.
    token.cancel();
    running.await.context("worker task")??;
    Ok((
        DONE.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// Runs this binary in a drain mode and reads its result.
async fn drain_child(settings: &Settings, mode: &[&str]) -> anyhow::Result<DrainResult> {
    let exe = std::env::current_exe()?;
    let output = tokio::process::Command::new(exe)
        .args(mode)
        .args(["--messages", &settings.messages.to_string()])
        .args(["--prefetch", &settings.prefetch.to_string()])
        .args(["--concurrency", &settings.concurrency.to_string()])
        .args(["--raw-consumers", &settings.raw_consumers.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !output.status.success() {
        bail!("drain child {mode:?} failed with {}", output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout
        .lines()
        .last()
        .context("drain child printed nothing")?;
    Ok(serde_json::from_str(last)?)
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
