//! A memory alarm, on a RabbitMQ node of the test's own: the broker blocks
//! every connection that publishes. The worker's retries go out on a
//! connection of their own, so its acks go on: every job that needs no
//! retry runs and is acked, an enqueue gives up at its bound, and a stop
//! ends in time. Once the alarm clears, every job has run and nothing is lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eda_worker::{Client, ClientOptions, Error, Job, Worker, WorkerConfig};
use eda_worker_tests::jobs::memory_alarm::{FAILS_ONCE_EVERY, alarm_job};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::node::{Node, NodeSpec};
use eda_worker_tests::{WAIT, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const JOBS: u32 = 300;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// `(ready, unacked)` of `queue` on `node`.
fn counts(node: &Node, queue: &str) -> (u32, u32) {
    let listed = node.ctl(&[
        "list_queues",
        "-q",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    listed
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&queue))
        .map_or((0, 0), |fields| {
            let number = |index: usize| fields[index].parse().expect("a count");
            (number(1), number(2))
        })
}

/// The jobs that ran to success (a job failing once succeeds on attempt 1).
fn succeeded() -> BTreeSet<u32> {
    runs(<alarm_job as Job>::QUEUE)
        .into_iter()
        .filter_map(|run| {
            let n: u32 = serde_json::from_value(run.args).expect("a number");
            (!n.is_multiple_of(FAILS_ONCE_EVERY) || run.attempt > 0).then_some(n)
        })
        .collect()
}

fn start_worker(url: &str, token: &CancellationToken) -> JoinHandle<Result<(), Error>> {
    let config = WorkerConfig::new(url)
        .queues([<alarm_job as Job>::QUEUE])
        .concurrency(16)
        .shutdown_timeout(SHUTDOWN_TIMEOUT);
    tokio::spawn(Worker::new(config).expect("config").run(token.clone()))
}

#[tokio::test]
async fn a_memory_alarm_blocks_retries_but_not_acks_and_loses_nothing() {
    let node = Node::start("alarm", NodeSpec::default());
    let url = node.amqp_url();
    let queue = <alarm_job as Job>::QUEUE;
    let client = Client::connect_with_options(
        &url,
        ClientOptions::default().publish_timeout(PUBLISH_TIMEOUT),
    )
    .await
    .expect("client");
    for n in 0..JOBS {
        client.enqueue(alarm_job, n).await.expect("enqueue");
    }

    node.ctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    wait_until("the memory alarm is raised", WAIT, || async {
        node.ctl(&["eval", "rabbit_alarm:get_alarms()."])
            .contains("memory")
    })
    .await;

    // An enqueue gives up at its bound, with the message id to retry with.
    let started = Instant::now();
    let error = client
        .enqueue(alarm_job, JOBS)
        .await
        .expect_err("the broker blocks publishers");
    assert!(
        matches!(&error, Error::PublishTimeout { timeout, .. } if *timeout == PUBLISH_TIMEOUT),
        "{error}"
    );
    assert!(started.elapsed() < PUBLISH_TIMEOUT + Duration::from_secs(2));

    // Every job that needs no retry runs and is acked; the ones whose retry
    // cannot go out are held, unacked, without running again.
    let token = CancellationToken::new();
    let worker = start_worker(&url, &token);
    let failing = JOBS / FAILS_ONCE_EVERY;
    wait_until(
        "every job that needs no retry has run and been acked",
        WAIT * 2,
        || async {
            succeeded().len() == usize::try_from(JOBS - failing).expect("small")
                && counts(&node, queue) == (0, failing)
        },
    )
    .await;
    let failed_runs = runs(queue)
        .iter()
        .filter(|run| {
            serde_json::from_value::<u32>(run.args.clone())
                .expect("a number")
                .is_multiple_of(FAILS_ONCE_EVERY)
        })
        .count();
    assert_eq!(
        failed_runs,
        usize::try_from(failing).expect("small"),
        "a held job does not run again"
    );

    // A stop during the alarm ends in time, handing the held jobs back.
    token.cancel();
    tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(10), worker)
        .await
        .expect("the worker stops within its shutdown timeout plus 10 s")
        .expect("worker task")
        .expect("the worker stops without error");
    assert_eq!(counts(&node, queue), (failing, 0), "the held jobs are back");

    // Once the alarm clears, the held jobs run again and succeed on retry.
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let token = CancellationToken::new();
    let worker = start_worker(&url, &token);
    // (The enqueue that timed out may arrive too: it was on its way.)
    wait_until("every job has run to success", WAIT * 2, || async {
        let succeeded = succeeded();
        (0..JOBS).all(|n| succeeded.contains(&n))
    })
    .await;
    wait_until("the queue is empty", WAIT, || async {
        counts(&node, queue) == (0, 0)
    })
    .await;
    assert_eq!(counts(&node, &format!("{queue}.dlq")), (0, 0));
    token.cancel();
    worker
        .await
        .expect("worker task")
        .expect("the worker stops without error");
    client.close().await.expect("close the client");
}
