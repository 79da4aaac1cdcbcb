//! The failure path under load: jobs that fail once and succeed on their
//! retry 1 s later, through the delay queues.
//!
//! Two figures: the throughput of a backlog of such jobs (each costs two
//! deliveries and a confirmed publish to a delay queue), and how late the
//! retries run against their due time while jobs arrive at a steady rate the
//! worker keeps up with. (In a backlog a retry also waits behind the first
//! attempts queued ahead of it, which is the queue's wait, not the delay's.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::now_millis;
use anyhow::{Context, bail};
use eda_worker::prelude::*;
use eda_worker::{DelayQueues, Worker, WorkerConfig, amqp_url_from_env};
use serde::{Deserialize as De, Serialize as Ser};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Queue of the fail-once jobs.
pub(crate) const FAIL_ONCE_QUEUE: &str = "eda-bench.fail-once";

/// The delay queues of the benchmark's queues: the default buckets.
pub(crate) fn bench_delays() -> DelayQueues {
    DelayQueues::default()
}

async fn bench_client() -> anyhow::Result<Client> {
    Ok(Client::connect(&amqp_url_from_env()).await?)
}

/// When attempt 0 of job `n` failed (ms since the epoch).
static FAILED_AT: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
/// How late each retry ran after its due time, in ms.
static LATENESS: Mutex<Vec<i64>> = Mutex::new(Vec::new());
static SUCCEEDED: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static ALL_DONE: Notify = Notify::const_new();

/// The retry delay of [`fail_once`].
const RETRY_DELAY_MS: u64 = 1000;

/// Fails its first attempt, succeeds on the retry 1 s later.
#[job(queue = "eda-bench.fail-once", retries = 1, backoff = "1s..1s")]
pub async fn fail_once(ctx: JobContext, n: u64) -> Result<(), JobError> {
    let now = now_millis();
    if ctx.attempt() == 0 {
        FAILED_AT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(n, now);
        return Err(JobError::msg("first attempts fail on purpose"));
    }
    let failed_at = FAILED_AT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
        .and_then(|failed| failed.remove(&n));
    if let Some(failed_at) = failed_at {
        let due = failed_at + RETRY_DELAY_MS;
        LATENESS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(now as i64 - due as i64);
    }
    if SUCCEEDED.fetch_add(1, Ordering::Relaxed) + 1 == TARGET.load(Ordering::Relaxed) {
        ALL_DONE.notify_one();
    }
    Ok(())
}

/// What a fail-once child reports.
#[derive(Debug, Ser, De)]
pub(crate) struct RetryResult {
    pub(crate) jobs: u64,
    pub(crate) seconds: f64,
    /// Lateness of the retries against their due time, ms, sorted.
    pub(crate) lateness_ms: Vec<i64>,
}

impl RetryResult {
    pub(crate) fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }

    /// The `percent` percentile of the lateness, in ms.
    pub(crate) fn lateness(&self, percent: f64) -> f64 {
        if self.lateness_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((percent / 100.0) * (self.lateness_ms.len() - 1) as f64).round() as usize;
        self.lateness_ms[rank.min(self.lateness_ms.len() - 1)] as f64
    }
}

/// Enqueues `jobs` fail-once jobs from `callers` concurrent callers.
pub(crate) async fn fill(jobs: u64, callers: usize) -> anyhow::Result<crate::report::Latencies> {
    let client = bench_client().await?;
    let enqueuer = client.clone();
    let filled = crate::report::concurrently(jobs, callers, move |n| {
        let client = enqueuer.clone();
        async move {
            client.enqueue(fail_once, n).await?;
            Ok(())
        }
    })
    .await?;
    client.close().await?;
    Ok(filled)
}

fn worker_config(settings: &Settings) -> WorkerConfig {
    WorkerConfig::new(amqp_url_from_env())
        .queues([FAIL_ONCE_QUEUE])
        .prefetch(settings.prefetch)
        .concurrency(settings.concurrency)
        .delay_queues(bench_delays())
}

async fn wait_for_all(jobs: u64, within: Duration) -> anyhow::Result<()> {
    if tokio::time::timeout(within, ALL_DONE.notified())
        .await
        .is_err()
    {
        bail!(
            "only {} of {jobs} fail-once jobs succeeded within {within:?}",
            SUCCEEDED.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

fn finish(jobs: u64, seconds: f64) -> RetryResult {
    let mut lateness_ms =
        std::mem::take(&mut *LATENESS.lock().unwrap_or_else(PoisonError::into_inner));
    lateness_ms.sort_unstable();
    RetryResult {
        jobs,
        seconds,
        lateness_ms,
    }
}

/// Drains a backlog of `settings.retry_messages` fail-once jobs (enqueued by
/// the parent) until every one has succeeded on its retry.
pub(crate) async fn backlog(settings: &Settings) -> anyhow::Result<RetryResult> {
    let jobs = settings.retry_messages;
    TARGET.store(jobs, Ordering::Relaxed);
    let worker = Worker::new(worker_config(settings))?;
    let token = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(token.clone()));
    let waited = wait_for_all(jobs, Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    token.cancel();
    running.await.context("worker task")??;
    waited?;
    Ok(finish(jobs, seconds))
}

/// Enqueues fail-once jobs at `rate` per second for `seconds` while a worker
/// runs, and measures how late their retries run.
pub(crate) async fn paced(
    settings: &Settings,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<RetryResult> {
    let jobs = rate * seconds;
    TARGET.store(jobs, Ordering::Relaxed);
    let worker = Worker::new(worker_config(settings))?;
    let token = CancellationToken::new();
    let running = tokio::spawn(worker.run(token.clone()));
    let client = bench_client().await?;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let mut sent = 0;
    let mut enqueues = tokio::task::JoinSet::new();
    while sent < jobs {
        ticker.tick().await;
        for _ in 0..per_tick.min(jobs - sent) {
            let client = client.clone();
            let n = sent;
            enqueues.spawn(async move { client.enqueue(fail_once, n).await });
            sent += 1;
        }
    }
    while let Some(joined) = enqueues.join_next().await {
        joined.context("enqueue task")??;
    }
    let waited = wait_for_all(jobs, Duration::from_secs(120)).await;
    let elapsed = started.elapsed().as_secs_f64();
    token.cancel();
    running.await.context("worker task")??;
    client.close().await?;
    waited?;
    Ok(finish(jobs, elapsed))
}
