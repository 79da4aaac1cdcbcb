//! Retries and scheduled jobs through the delay queues: the schedule, no
//! head-of-line blocking, hops past the largest bucket, spent retries and
//! permanent errors in the DLQ, panics and timeouts retried, and a retry that
//! goes back to its own queue only.

use std::time::{Duration, SystemTime};

use eda_worker::wire::{
    HEADER_ATTEMPT, HEADER_ERROR, HEADER_ETA, HEADER_QUEUE, header_text, header_u64,
};
use eda_worker::{Client, ClientOptions, DelayQueues};
use eda_worker_tests::jobs::{
    CRASH_QUEUE, DELAY_DELETED_QUEUE, EXHAUSTED_QUEUE, HOL_QUEUE, RETRY_QUEUE, Run,
    SCHEDULED_QUEUE, SUBSCRIBER_QUEUE, flaky, flaky_after_delay, flaky_each_second, hangs_once,
    never_succeeds, panics_once, rejects, runs, scheduled,
};
use eda_worker_tests::now_millis;
use eda_worker_tests::{Broker, RunningWorker, WAIT, amqp_url, wait_until, worker_config};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};

/// The runs of message `id`, in order.
fn runs_of(queue: &str, id: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = runs(queue)
        .into_iter()
        .filter(|run| run.message_id == id)
        .collect();
    runs.sort_by_key(|run| run.at_ms);
    runs
}

async fn wait_for_runs(queue: &str, id: &str, count: usize) -> Vec<Run> {
    wait_until(&format!("{count} runs of {id}"), WAIT, || async {
        runs_of(queue, id).len() >= count
    })
    .await;
    runs_of(queue, id)
}

/// Asserts that `gap_ms` lies in `low..=high`.
fn assert_gap(what: &str, gap_ms: u64, low: u64, high: u64) {
    assert!(
        (low..=high).contains(&gap_ms),
        "{what}: {gap_ms} ms, expected {low}..={high} ms"
    );
}

/// How late a delay may come on a quiet test machine: the planning slack
/// (the smallest bucket, 100 ms) plus broker and worker latency.
const LATE_MS: u64 = 100 + 400;

#[tokio::test]
async fn a_job_failing_twice_runs_three_times_on_schedule_and_is_acked() {
    let broker = Broker::connect().await;
    broker.reset(RETRY_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, RETRY_QUEUE, worker_config()).await;

    let id = client.enqueue(flaky, 2).await.unwrap().to_string();
    let ran = wait_for_runs(RETRY_QUEUE, &id, 3).await;
    let attempts: Vec<u32> = ran.iter().map(|run| run.attempt).collect();
    assert_eq!(attempts, [0, 1, 2]);
    // backoff 200ms..10s with ±25 % jitter: 200..250 ms, then 300..500 ms.
    assert_gap(
        "first retry",
        ran[1].at_ms - ran[0].at_ms,
        200,
        250 + LATE_MS,
    );
    assert_gap(
        "second retry",
        ran[2].at_ms - ran[1].at_ms,
        300,
        500 + LATE_MS,
    );

    wait_until("the queue is empty", WAIT, || async {
        broker.ready(RETRY_QUEUE).await == 0
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(runs_of(RETRY_QUEUE, &id).len(), 3, "no fourth run");
    assert_eq!(broker.ready(RETRY_QUEUE).await, 0, "acked");
    assert_eq!(broker.ready(&format!("{RETRY_QUEUE}.dlq")).await, 0);
    let delays = DelayQueues::default();
    for bucket in delays.buckets() {
        assert_eq!(broker.ready(&delays.name(RETRY_QUEUE, *bucket)).await, 0);
    }
    client.close().await.unwrap();
    broker.cleanup(RETRY_QUEUE).await;
}

#[tokio::test]
async fn a_one_second_retry_is_not_held_up_by_a_job_scheduled_in_an_hour() {
    let broker = Broker::connect().await;
    broker.reset(HOL_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, HOL_QUEUE, worker_config()).await;

    let later = client
        .enqueue_in(flaky_each_second, 0, Duration::from_secs(3600))
        .await
        .unwrap()
        .to_string();
    let id = client
        .enqueue(flaky_each_second, 1)
        .await
        .unwrap()
        .to_string();
    let ran = wait_for_runs(HOL_QUEUE, &id, 2).await;
    assert_eq!(ran[1].attempt, 1);
    assert_gap(
        "retry behind a 1 h job",
        ran[1].at_ms - ran[0].at_ms,
        1000,
        1000 + LATE_MS,
    );
    let hour_queue = DelayQueues::default().name(HOL_QUEUE, Duration::from_secs(3600));
    assert_eq!(
        broker.ready(&hour_queue).await,
        1,
        "the 1 h job waits in its own delay queue"
    );
    assert!(runs_of(HOL_QUEUE, &later).is_empty());

    worker.stop().await.unwrap();
    client.close().await.unwrap();
    broker.cleanup(HOL_QUEUE).await;
}

#[tokio::test]
async fn scheduled_jobs_run_no_earlier_than_due_even_past_the_largest_bucket() {
    let broker = Broker::connect().await;
    broker.reset(SCHEDULED_QUEUE).await;
    // Buckets of 200 and 500 ms: 1.7 s takes four hops.
    let delays =
        DelayQueues::new([Duration::from_millis(200), Duration::from_millis(500)]).unwrap();
    let options = ClientOptions::default().delay_queues(delays.clone());
    let client = eda_worker::Client::connect_with_options(&amqp_url(), options)
        .await
        .unwrap();
    let worker = RunningWorker::start(
        &broker,
        SCHEDULED_QUEUE,
        worker_config().delay_queues(delays.clone()),
    )
    .await;

    let start = now_millis();
    let hopping = client
        .enqueue_in(scheduled, 1, Duration::from_millis(1700))
        .await
        .unwrap()
        .to_string();
    let at = SystemTime::now() + Duration::from_millis(1200);
    let at_ms = now_millis() + 1200;
    let timed = client
        .enqueue_at(scheduled, 2, at)
        .await
        .unwrap()
        .to_string();
    let past = client
        .enqueue_at(scheduled, 3, SystemTime::now() - Duration::from_secs(3600))
        .await
        .unwrap()
        .to_string();
    // A message that an outside producer put straight on the job queue with
    // a due time: the worker sends it on instead of running it early.
    let foreign_due = now_millis() + 800;
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_ETA.into(),
        AMQPValue::LongLongInt(i64::try_from(foreign_due).unwrap()),
    );
    broker
        .channel()
        .await
        .basic_publish(
            "".into(),
            SCHEDULED_QUEUE.into(),
            BasicPublishOptions::default(),
            b"4",
            BasicProperties::default()
                .with_message_id("foreign-eta".into())
                .with_type("scheduled".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let past_run = wait_for_runs(SCHEDULED_QUEUE, &past, 1).await;
    assert!(
        past_run[0].at_ms - start < 1000,
        "a due time in the past runs at once"
    );
    for (id, due) in [
        (hopping.as_str(), start + 1700),
        (timed.as_str(), at_ms),
        ("foreign-eta", foreign_due),
    ] {
        let ran = wait_for_runs(SCHEDULED_QUEUE, id, 1).await;
        assert!(
            ran[0].at_ms >= due,
            "{id} ran {} ms early",
            due - ran[0].at_ms
        );
        assert_gap(&format!("{id} lateness"), ran[0].at_ms - due, 0, LATE_MS);
        assert_eq!(ran.len(), 1);
    }

    worker.stop().await.unwrap();
    client.close().await.unwrap();
    broker.cleanup(SCHEDULED_QUEUE).await;
}

#[tokio::test]
async fn spent_retries_and_permanent_errors_land_in_the_dlq_with_their_headers() {
    let broker = Broker::connect().await;
    broker.reset(EXHAUSTED_QUEUE).await;
    let dlq = format!("{EXHAUSTED_QUEUE}.dlq");
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, EXHAUSTED_QUEUE, worker_config()).await;

    let spent = client.enqueue(never_succeeds, 7).await.unwrap().to_string();
    let permanent = client.enqueue(rejects, 8).await.unwrap().to_string();
    wait_until("two dead letters", WAIT, || async {
        broker.ready(&dlq).await == 2
    })
    .await;
    worker.stop().await.unwrap();

    let spent_runs: Vec<u32> = runs_of(EXHAUSTED_QUEUE, &spent)
        .iter()
        .map(|run| run.attempt)
        .collect();
    assert_eq!(spent_runs, [0, 1, 2], "the first run and 2 retries");
    assert_eq!(runs_of(EXHAUSTED_QUEUE, &permanent).len(), 1, "no retry");
    assert_eq!(broker.ready(EXHAUSTED_QUEUE).await, 0);

    let dead = broker.drain(&dlq).await;
    for (id, body, attempt, error) in [
        (&spent, b"7", 2, "upstream 503 for 7"),
        (&permanent, b"8", 0, "order 8 does not exist"),
    ] {
        let message = dead
            .iter()
            .find(|m| {
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|m| m.as_str() == id)
            })
            .unwrap_or_else(|| panic!("{id} is dead-lettered"));
        let properties = &message.delivery.properties;
        assert_eq!(message.delivery.data, body, "body unchanged");
        assert_eq!(header_u64(properties, HEADER_ATTEMPT), Some(attempt));
        assert_eq!(
            header_text(properties, HEADER_ERROR).as_deref(),
            Some(error)
        );
        assert_eq!(
            header_text(properties, HEADER_QUEUE).as_deref(),
            Some(EXHAUSTED_QUEUE)
        );
        let headers = properties.headers().as_ref().unwrap().inner();
        assert!(
            !headers.contains_key("x-death"),
            "the broker's delay-queue history is left behind"
        );
    }
    client.close().await.unwrap();
    broker.cleanup(EXHAUSTED_QUEUE).await;
}

#[tokio::test]
async fn a_panic_and_a_timeout_are_failed_attempts_that_retry() {
    let broker = Broker::connect().await;
    broker.reset(CRASH_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, CRASH_QUEUE, worker_config()).await;

    let panicked = client.enqueue(panics_once, 1).await.unwrap().to_string();
    let hung = client.enqueue(hangs_once, 2).await.unwrap().to_string();
    for id in [&panicked, &hung] {
        let ran = wait_for_runs(CRASH_QUEUE, id, 2).await;
        assert_eq!(
            ran.iter().map(|run| run.attempt).collect::<Vec<_>>(),
            [0, 1]
        );
    }
    wait_until("the queue is empty", WAIT, || async {
        broker.ready(CRASH_QUEUE).await == 0
    })
    .await;
    assert!(worker.is_running(), "a panic does not stop the worker");
    worker.stop().await.unwrap();
    assert_eq!(broker.ready(&format!("{CRASH_QUEUE}.dlq")).await, 0);
    client.close().await.unwrap();
    broker.cleanup(CRASH_QUEUE).await;
}

#[tokio::test]
async fn an_event_handlers_retry_reaches_only_its_own_queue() {
    let broker = Broker::connect().await;
    broker.reset(SUBSCRIBER_QUEUE).await;
    let exchange = format!("{SUBSCRIBER_QUEUE}.events");
    let spy = format!("{SUBSCRIBER_QUEUE}.spy");
    broker.delete_queue(&spy).await;
    let worker = RunningWorker::start(&broker, SUBSCRIBER_QUEUE, worker_config()).await;

    // Pub/sub: a fanout exchange with the handler's queue and another subscriber.
    let channel = broker.channel().await;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            spy.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for queue in [SUBSCRIBER_QUEUE, spy.as_str()] {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    channel
        .basic_publish(
            exchange.as_str().into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default()
                .with_message_id("event-1".into())
                .with_type("subscriber_flaky".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let ran = wait_for_runs(SUBSCRIBER_QUEUE, "event-1", 2).await;
    assert_eq!(ran[1].attempt, 1, "the handler retried");
    assert_eq!(
        broker.ready(&spy).await,
        1,
        "the other subscriber got the event once, not again with the retry"
    );

    worker.stop().await.unwrap();
    broker.delete_queue(&spy).await;
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    broker.cleanup(SUBSCRIBER_QUEUE).await;
}

#[tokio::test]
async fn a_deleted_delay_queue_is_declared_again_by_the_client_and_the_worker() {
    let broker = Broker::connect().await;
    broker.reset(DELAY_DELETED_QUEUE).await;
    let shortest = DelayQueues::default().name(DELAY_DELETED_QUEUE, Duration::from_millis(100));
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, DELAY_DELETED_QUEUE, worker_config()).await;

    // The client: its delayed publish comes back unroutable, it declares the
    // delay queues again and publishes once more.
    let first = client
        .enqueue_in(flaky_after_delay, 0, Duration::from_millis(50))
        .await
        .unwrap()
        .to_string();
    wait_for_runs(DELAY_DELETED_QUEUE, &first, 1).await;
    broker.delete_queue(&shortest).await;
    let second = client
        .enqueue_in(flaky_after_delay, 0, Duration::from_millis(50))
        .await
        .unwrap()
        .to_string();
    wait_for_runs(DELAY_DELETED_QUEUE, &second, 1).await;

    // The worker: the retry cannot be published, so the failed delivery goes
    // back to the queue, and the worker reconnects and declares the delay
    // queues again; the retry then runs.
    broker.delete_queue(&shortest).await;
    let retried = client
        .enqueue(flaky_after_delay, 1)
        .await
        .unwrap()
        .to_string();
    wait_until(
        "the retry ran after the delay queue came back",
        WAIT,
        || async {
            runs_of(DELAY_DELETED_QUEUE, &retried)
                .iter()
                .any(|run| run.attempt == 1)
        },
    )
    .await;
    assert!(worker.is_running());
    worker.stop().await.unwrap();
    assert_eq!(broker.ready(&format!("{DELAY_DELETED_QUEUE}.dlq")).await, 0);
    assert_eq!(broker.ready(DELAY_DELETED_QUEUE).await, 0);
    client.close().await.unwrap();
    broker.cleanup(DELAY_DELETED_QUEUE).await;
}
