//! The end-to-end demo: enqueue a batch of welcome emails with broker
//! confirms (one of them scheduled, one of them with a bad address), run a
//! worker until every good one ran (some after a retry), show the bad one in
//! the dead-letter queue, and stop the worker gracefully.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eda_worker::dead_letter::DeadLetters;
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
    let dead_letters = DeadLetters::connect(&url).await?;

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
    let late = Welcome {
        user_id: BATCH + 1,
        email: "late@example.com".into(),
    };
    ids.insert(
        client
            .enqueue_in(send_welcome, late, Duration::from_secs(2))
            .await?
            .to_string(),
    );
    let bad = Welcome {
        user_id: 0,
        email: "not-an-address".into(),
    };
    let bad_id = client.enqueue(send_welcome, bad).await?.to_string();
    println!(
        "enqueued {} jobs (one due in 2 s, one with a bad address), each confirmed by the broker, in {:?}",
        BATCH + 2,
        started.elapsed()
    );

    let token = CancellationToken::new();
    let worker = Worker::new(WorkerConfig::new(url).queues(["quickstart.email"]))?;
    let running = tokio::spawn(worker.run(token.clone()));

    let waited = Instant::now();
    let mut dead = Vec::new();
    while !ids.iter().all(|id| ran(id))
        || !dead
            .iter()
            .any(|d: &eda_worker::dead_letter::DeadLetter| d.message_id == bad_id)
    {
        if waited.elapsed() > DEADLINE {
            token.cancel();
            bail!(
                "only {} of {} jobs ran, and the bad one is {}in the dead-letter queue, after {DEADLINE:?}",
                ids.iter().filter(|id| ran(id)).count(),
                ids.len(),
                if dead.is_empty() { "not " } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        dead = match dead_letters.list("quickstart.email", 100).await {
            Ok(dead) => dead,
            // The worker declares the dead-letter queue as it starts.
            Err(eda_worker::Error::DeadLetterQueueNotFound { .. }) => Vec::new(),
            Err(error) => return Err(error.into()),
        };
    }
    token.cancel();
    running.await.context("worker task")??;
    for letter in dead.iter().filter(|letter| letter.message_id == bad_id) {
        println!(
            "dead letter {} (job {}, attempt {}): {}",
            letter.message_id,
            letter.job.as_deref().unwrap_or("?"),
            letter.attempt,
            letter.error.as_deref().unwrap_or("")
        );
    }
    // Leaves the queue clean for the next run; `worker dlq purge quickstart.email` does the same.
    dead_letters.purge("quickstart.email").await?;
    dead_letters.close().await?;
    client.close().await?;
    println!(
        "all {} good jobs ran (every fifth after one retry), the bad one is in the dead-letter queue; worker stopped gracefully after {:?}",
        ids.len(),
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
