//! The PostgreSQL figures: the raw commit ceiling, dedup'd no-op jobs (each
//! one a transaction with its inbox row), and the outbox relay (throughput
//! from a backlog, and latency from commit to the consumer when idle).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eda_worker::outbox::{Outbox, Relay};
use eda_worker::postgres::{DEFAULT_POOL_SIZE, Database, Schema};
use eda_worker::prelude::*;
use eda_worker::{Worker, WorkerConfig, amqp_url_from_env};
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::{Connection, ConnectionProperties};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::report::{Latencies, concurrently};

/// The benchmark's schema (dropped at the end).
const SCHEMA: &str = "eda_bench";
/// Queue of the dedup'd no-op jobs.
pub(crate) const DEDUP_QUEUE: &str = "eda-bench.dedup";
/// Queue the relay publishes to.
pub(crate) const RELAY_QUEUE: &str = "eda-bench.relay";
/// Concurrency of the database figures, as the issue fixes it.
const CONCURRENCY: usize = 16;

static DONE: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static ALL_DONE: Notify = Notify::const_new();

/// A no-op job that runs in a transaction with its inbox row.
#[job(queue = "eda-bench.dedup", retries = 0, dedup = true)]
pub async fn noop_dedup(_ctx: JobContext, _n: u64) -> Result<(), JobError> {
    if DONE.fetch_add(1, Ordering::Relaxed) + 1 == TARGET.load(Ordering::Relaxed) {
        ALL_DONE.notify_one();
    }
    Ok(())
}

/// Only published by the relay, drained by the benchmark.
#[job(queue = "eda-bench.relay")]
pub async fn relayed(_ctx: JobContext, _n: u64) -> Result<(), JobError> {
    Ok(())
}

/// What the PostgreSQL figures measured.
pub(crate) struct Figures {
    pub(crate) raw_commits: Latencies,
    /// Checkouts from eda-worker's pool, 16 at a time, each used for one statement.
    pub(crate) checkout: Latencies,
    /// The same on a pool of sqlx's defaults (which tests every connection
    /// it hands out with a round trip).
    pub(crate) raw_checkout: Latencies,
    pub(crate) dedup_jobs_per_sec: f64,
    pub(crate) relay_rows_per_sec: f64,
    pub(crate) relay_latency: Latencies,
}

fn database_url() -> String {
    eda_worker::postgres::database_url_from_env()
        .unwrap_or_else(|| crate::DEFAULT_DATABASE_URL.to_owned())
}

pub(crate) async fn database() -> anyhow::Result<Database> {
    Ok(Database::connect(&database_url(), Schema::new(SCHEMA)?).await?)
}

/// `count` checkouts from `pool`, 16 at a time, each used for one
/// `SELECT 1` and returned; times the checkouts alone.
async fn checkouts(pool: &PgPool, count: u64) -> anyhow::Result<Latencies> {
    let pool = pool.clone();
    let checkouts = Arc::new(Mutex::new(Vec::new()));
    let timed = checkouts.clone();
    let started = Instant::now();
    concurrently(count, CONCURRENCY, move |_| {
        let (pool, timed) = (pool.clone(), timed.clone());
        async move {
            let asked = Instant::now();
            let mut conn = pool.acquire().await?;
            let took = asked.elapsed();
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            timed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(took);
            Ok(())
        }
    })
    .await?;
    let samples = std::mem::take(&mut *checkouts.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Latencies::new(samples, started.elapsed()))
}

async fn reset(database: &Database) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(database.pool())
    .await?;
    database.migrate().await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {SCHEMA}.raw_inbox (message_id text PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(database.pool())
    .await?;
    Ok(())
}

/// Runs every PostgreSQL figure; `rows` for the relay, `jobs` for the rest.
pub(crate) async fn run(jobs: u64, rows: u64, latency_samples: u64) -> anyhow::Result<Figures> {
    let url = database_url();
    let database = database().await?;
    reset(&database).await?;

    // The ceiling: sqlx alone, on a pool of its defaults (as big as
    // eda-worker's), one INSERT ... ON CONFLICT per transaction, 16 at a time.
    let raw_pool = PgPoolOptions::new()
        .max_connections(DEFAULT_POOL_SIZE)
        .connect(&url)
        .await?;
    let pool = raw_pool.clone();
    let raw_commits = concurrently(jobs, CONCURRENCY, move |n| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {SCHEMA}.raw_inbox (message_id) VALUES ($1) ON CONFLICT DO NOTHING"
            )))
            .bind(format!("raw-{n}"))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await?;

    // What a job pays before its first statement: a checkout from the pool,
    // on eda-worker's pool and on sqlx's defaults.
    let checkout = checkouts(database.pool(), jobs).await?;
    let raw_checkout = checkouts(&raw_pool, jobs).await?;
    raw_pool.close().await;

    let dedup_jobs_per_sec = dedup_drain(&database, jobs).await?;
    let relay_rows_per_sec = relay_drain(&database, rows).await?;
    let relay_latency = relay_latency(&database, latency_samples).await?;

    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(database.pool())
    .await?;
    database.close().await;
    Ok(Figures {
        raw_commits,
        checkout,
        raw_checkout,
        dedup_jobs_per_sec,
        relay_rows_per_sec,
        relay_latency,
    })
}

/// Enqueues `jobs` dedup'd no-op jobs, then times a worker (concurrency 16)
/// draining them.
async fn dedup_drain(database: &Database, jobs: u64) -> anyhow::Result<f64> {
    let client = Client::connect(&amqp_url_from_env()).await?;
    let enqueuer = client.clone();
    concurrently(jobs, 64, move |n| {
        let client = enqueuer.clone();
        async move {
            client.enqueue(noop_dedup, n).await?;
            Ok(())
        }
    })
    .await?;
    client.close().await?;
    TARGET.store(jobs, Ordering::Relaxed);
    let config = WorkerConfig::new(amqp_url_from_env())
        .queues([DEDUP_QUEUE])
        .concurrency(CONCURRENCY)
        .prefetch(64)
        .database(database.clone())
        .relay(false);
    let token = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(Worker::new(config)?.run(token.clone()));
    let waited = tokio::time::timeout(Duration::from_secs(600), ALL_DONE.notified()).await;
    let seconds = started.elapsed().as_secs_f64();
    token.cancel();
    running.await.context("worker task")??;
    if waited.is_err() {
        bail!(
            "only {} of {jobs} dedup'd jobs ran",
            DONE.load(Ordering::Relaxed)
        );
    }
    Ok(jobs as f64 / seconds)
}

async fn pending(database: &Database) -> anyhow::Result<i64> {
    Ok(eda_worker::outbox::status(database).await?.pending)
}

/// Commits `rows` outbox rows (1,000 per transaction), then times one relay
/// publishing all of them.
async fn relay_drain(database: &Database, rows: u64) -> anyhow::Result<f64> {
    let outbox = Outbox::in_schema(Schema::new(SCHEMA)?);
    let mut n = 0;
    while n < rows {
        let mut tx = database.pool().begin().await?;
        for _ in 0..1000.min(rows - n) {
            outbox.enqueue(&mut tx, relayed, n).await?;
            n += 1;
        }
        tx.commit().await?;
    }
    let token = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(Relay::new(database.clone(), amqp_url_from_env()).run(token.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    while pending(database).await? > 0 {
        if Instant::now() > deadline {
            bail!("the relay did not drain {rows} rows in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    token.cancel();
    relay.await.context("relay task")??;
    Ok(rows as f64 / seconds)
}

/// With the relay idle, commits one row at a time and times it from the
/// commit to its arrival at a consumer of the queue.
async fn relay_latency(database: &Database, samples: u64) -> anyhow::Result<Latencies> {
    let url = amqp_url_from_env();
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(RELAY_QUEUE.into(), Default::default())
        .await?;
    let mut consumer = crate::raw::consume(&channel, RELAY_QUEUE, "latency").await?;
    let token = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(database.clone(), url).run(token.clone()));
    let outbox = Outbox::in_schema(Schema::new(SCHEMA)?);
    // Let the relay start listening and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    for n in 0..samples {
        let mut tx = database.pool().begin().await?;
        outbox.enqueue(&mut tx, relayed, n).await?;
        tx.commit().await?;
        let committed = Instant::now();
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .context("no message within 10 s of its commit")?
            .context("consumer ended")??;
        latencies.push(committed.elapsed());
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    token.cancel();
    relay.await.context("relay task")??;
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(Latencies::new(latencies, started.elapsed()))
}
