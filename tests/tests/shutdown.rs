//! Graceful shutdown of the `worker` command, run as a subprocess: SIGTERM
//! during a backlog loses and duplicates nothing; a second signal exits at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eda_worker::Job;
use eda_worker_tests::jobs::dead_letters::dead_letter_sleeps;
use eda_worker_tests::jobs::enqueue::refused;
use eda_worker_tests::jobs::shutdown::{
    Effect, deadline_effect, leaky_log, long_effect, slow_effect,
};
use eda_worker_tests::process::WorkerProcess;
use eda_worker_tests::{Scene, WAIT, wait_until, worker_command};

/// Enqueues `count` jobs of `job`, each logging its id to `log` and working `work_ms`.
async fn enqueue_effects<J: Job<Args = Effect>>(
    scene: &Scene,
    job: J,
    log: &Path,
    count: u32,
    work_ms: u64,
) {
    for id in 0..count {
        let args = Effect {
            id,
            log: log.display().to_string(),
            work_ms,
        };
        scene.enqueue(job, args).await;
    }
}

fn effect_log(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("eda-worker-{name}-{}.log", uuid::Uuid::new_v4()))
}

/// How many times each id was logged.
fn effects(path: &Path) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts
            .entry(line.parse().expect("an id per line"))
            .or_default() += 1;
    }
    counts
}

/// Starts a worker process on `job`'s queue with `extra` options once
/// `jobs` of `job` (each working `work_ms`) wait there, and waits until
/// each has started; then sends SIGTERM. Returns the scene, the worker and
/// the effect log.
async fn terminate_while_every_job_runs<J: Job<Args = Effect>>(
    job: J,
    jobs: u32,
    work_ms: u64,
    extra: &[&str],
) -> (Scene, WorkerProcess, PathBuf) {
    let scene = Scene::of(job).workers(0).start().await;
    let log = effect_log(J::NAME);
    enqueue_effects(&scene, job, &log, jobs, work_ms).await;
    let worker = WorkerProcess::spawn(worker_command!("run"), J::QUEUE, extra);
    wait_until("every job started", WAIT, || async {
        effects(&log).len() == jobs as usize
    })
    .await;
    worker.signal("TERM");
    (scene, worker, log)
}

/// Waits until all `jobs` are back on the scene's queue (not acked, so not
/// lost: the broker has them back), then tears the scene down.
async fn every_job_back_then_finish(scene: Scene, jobs: u32, log: PathBuf) {
    wait_until("the unfinished jobs are back", WAIT, || async {
        scene.ready().await == jobs
    })
    .await;
    scene.finish().await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn sigterm_mid_backlog_loses_and_duplicates_nothing() {
    const JOBS: u32 = 200;
    let queue = <slow_effect as Job>::QUEUE;
    let scene = Scene::of(slow_effect).workers(0).start().await;
    let log = effect_log("shutdown");
    enqueue_effects(&scene, slow_effect, &log, JOBS, 50).await;

    let options = ["--concurrency", "8", "--prefetch", "16"];
    let mut first = WorkerProcess::spawn(worker_command!("run"), queue, &options);
    first.wait_for_log("consuming").await;
    wait_until("some jobs ran", WAIT, || async {
        effects(&log).len() >= 40
    })
    .await;
    first.signal("TERM");
    let (status, _) = first.exit().await;
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let after_first = effects(&log);
    assert!(
        after_first.len() < JOBS as usize,
        "the first worker stopped before the backlog was done"
    );
    assert!(
        after_first.values().all(|&count| count == 1),
        "no job ran twice: {after_first:?}"
    );
    // Everything the first worker did not finish is back on the queue, ready.
    let left = JOBS - after_first.len() as u32;
    wait_until("unfinished jobs are back on the queue", WAIT, || async {
        scene.ready().await == left
    })
    .await;

    let mut second = WorkerProcess::spawn(worker_command!("run"), queue, &options);
    second.wait_for_log("consuming").await;
    wait_until("the second worker drained the rest", WAIT, || async {
        effects(&log).len() == JOBS as usize
    })
    .await;
    second.signal("TERM");
    let (status, _) = second.exit().await;
    assert_eq!(status.code(), Some(0));

    let all = effects(&log);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (0..JOBS).collect::<Vec<_>>(),
        "every job ran"
    );
    assert!(
        all.values().all(|&count| count == 1),
        "none ran twice: {all:?}"
    );
    assert_eq!(scene.ready().await, 0, "nothing left on the queue");
    assert_eq!(scene.broker.consumers(queue).await, 0);
    scene.finish().await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_unfinished_jobs_return_to_the_queue() {
    const JOBS: u32 = 3;
    let (scene, mut worker, log) = terminate_while_every_job_runs(
        long_effect,
        JOBS,
        60_000,
        &["--concurrency", "4", "--shutdown-timeout", "60s"],
    )
    .await;
    worker.wait_for_log("stop signal received").await;
    worker.signal("INT");
    let (status, waited) = worker.exit().await;
    assert_eq!(status.code(), Some(130), "a second signal exits non-zero");
    assert!(
        waited < Duration::from_secs(20),
        "it did not wait for the 60 s jobs ({waited:?})"
    );
    every_job_back_then_finish(scene, JOBS, log).await;
}

#[tokio::test]
async fn jobs_still_running_at_the_shutdown_deadline_are_not_acked() {
    const JOBS: u32 = 2;
    let (scene, worker, log) = terminate_while_every_job_runs(
        deadline_effect,
        JOBS,
        30_000,
        &["--concurrency", "4", "--shutdown-timeout", "1s"],
    )
    .await;
    let (status, waited) = worker.exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "reaching the deadline is still a graceful stop"
    );
    assert!(
        waited < Duration::from_secs(15),
        "it stopped at the deadline, not after the jobs ({waited:?})"
    );
    every_job_back_then_finish(scene, JOBS, log).await;
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_command_with_a_redacted_one_line_error() {
    // One queue whose jobs need no database (the test worker also links a
    // job with `dedup = true`, which refuses to start without one).
    let queue = <refused as Job>::QUEUE;
    let output = worker_command!("run", "--queues", queue, "--connect-attempts", "2")
        .env("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:1/%2f")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: could not connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f after 2 attempt(s)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn worker_jobs_lists_every_linked_job() {
    let output = worker_command!("jobs").output().await.unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "JOB", "QUEUE", "TYPE", "RETRIES", "BACKOFF", "TIMEOUT", "BINDINGS", "FUNCTION"
        ]
    );
    let row = lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|row| row.first() == Some(&"dead_letter_sleeps"))
        .expect("dead_letter_sleeps is listed");
    assert_eq!(
        row,
        [
            "dead_letter_sleeps",
            <dead_letter_sleeps as Job>::QUEUE,
            "classic",
            "0",
            "5s..10m",
            "200ms",
            "-",
            "eda_worker_tests::jobs::dead_letters::dead_letter_sleeps"
        ]
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let subscriber = rows
        .iter()
        .find(|row| {
            row.first() == Some(&"order.shipped") && row.get(1) == Some(&"eda-test.subscribe.email")
        })
        .expect("the subscriber is listed under its event's wire name");
    assert_eq!(
        subscriber[6..8],
        ["eda-test.subscribe:order.shipped", "(topic)"]
    );
    let raw = rows
        .iter()
        .find(|row| row.first() == Some(&"audit_orders"))
        .expect("the raw subscriber is listed");
    assert_eq!(raw[6..8], ["eda-test.subscribe:order.#", "(raw)"]);
}

#[tokio::test]
async fn a_password_in_a_handler_error_is_redacted_in_the_log() {
    let scene = Scene::of(leaky_log).workers(0).start().await;
    let mut worker = WorkerProcess::spawn(worker_command!("run"), scene.queue(), &[]);
    worker.wait_for_log("consuming").await;
    scene.enqueue(leaky_log, 7).await;
    // The retry's warning, then the dead letter's.
    worker
        .wait_for_log_without("GET https://user:***@host/x/7 refused", ":secret@")
        .await;
    worker
        .wait_for_log_without("moved to the dead-letter queue", ":secret@")
        .await;
    worker.signal("TERM");
    let (status, _) = worker.exit().await;
    assert!(status.success());
    scene.wait_for_dead_letters(1).await;
    let letters = scene.take_dead_letters().await;
    let error = eda_worker_tests::broker::error_header(&letters[0]);
    assert!(error.contains("https://user:***@host/x/7"), "{error}");
    scene.finish().await;
}
