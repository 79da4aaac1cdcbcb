//! The end-to-end demo: enqueue a batch of welcome emails with broker
//! confirms, run a worker until every one of them ran, print what ran, and
//! stop the worker gracefully.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eda_worker::{Client, EnqueueOptions, Worker, WorkerConfig, amqp_url_from_env, redact_url};
use quickstart::{SENT, Welcome, send_welcome};
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 20;
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = amqp_url_from_env();
    println!("broker: {}", redact_url(&url));
    let client = Client::connect(&url).await?;

    let started = Instant::now();
    let mut ids = HashSet::new();
    for user_id in 1..=BATCH {
        let args = Welcome {
            user_id,
            email: format!("user{user_id}@example.com"),
        };
        let options = EnqueueOptions::default().correlation_id(format!("demo-signup-{user_id}"));
        let id = client.enqueue_with(send_welcome, args, options).await?;
        ids.insert(id.to_string());
    }
    println!(
        "enqueued {BATCH} jobs, each confirmed by the broker, in {:?}",
        started.elapsed()
    );

    let token = CancellationToken::new();
    let worker = Worker::new(WorkerConfig::new(url).queues(["quickstart.email"]))?;
    let running = tokio::spawn(worker.run(token.clone()));

    let waited = Instant::now();
    while !ids.iter().all(|id| ran(id)) {
        if waited.elapsed() > DEADLINE {
            token.cancel();
            bail!(
                "only {} of {BATCH} jobs ran within {DEADLINE:?}",
                ids.iter().filter(|id| ran(id)).count()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    running.await.context("worker task")??;
    client.close().await?;
    println!(
        "all {BATCH} jobs ran once each; worker stopped gracefully after {:?}",
        started.elapsed()
    );
    Ok(())
}

fn ran(id: &str) -> bool {
    SENT.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|sent| sent.contains(id))
}
