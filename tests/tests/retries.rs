//! Retries and scheduled jobs through the delay queues: the schedule, no
//! head-of-line blocking, hops past the largest bucket, spent retries and
//! permanent errors in the DLQ, panics and timeouts retried, and a retry that
//! goes back to its own queue only.

use std::time::{Duration, SystemTime};

use eda_worker::wire::{
    CONTENT_TYPE_JSON, HEADER_ATTEMPT, HEADER_ETA, HEADER_QUEUE, header_text, header_u64,
};
use eda_worker::{DelayQueues, Job};
use eda_worker_tests::broker::{error_header, find_message, foreign_properties};
use eda_worker_tests::jobs::retries::{
    flaky, flaky_after_delay, flaky_each_second, hangs_once, never_succeeds, old_format_fails,
    panics_once, rejects, scheduled, subscriber_flaky,
};
use eda_worker_tests::jobs::{Run, runs_of};
use eda_worker_tests::{Scene, WAIT, now_millis, wait_until};
use lapin::BasicProperties;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use uuid::Uuid;

async fn wait_for_runs(queue: &str, id: &str, count: usize) -> Vec<Run> {
    wait_until(&format!("{count} runs of {id}"), WAIT, || async {
        runs_of(queue, id).len() >= count
    })
    .await;
    runs_of(queue, id)
}

/// The attempts of message `id`, in the order they ran.
fn attempts(queue: &str, id: &str) -> Vec<u32> {
    runs_of(queue, id).iter().map(|run| run.attempt).collect()
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
    let mut scene = Scene::of(flaky).start().await;
    let queue = <flaky as Job>::QUEUE;

    let id = scene.enqueue(flaky, 2).await;
    let ran = wait_for_runs(queue, &id, 3).await;
    assert_eq!(attempts(queue, &id), [0, 1, 2]);
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
        scene.ready().await == 0
    })
    .await;
    scene.stop_workers().await;
    assert_eq!(runs_of(queue, &id).len(), 3, "no fourth run");
    assert_eq!(scene.ready().await, 0, "acked");
    assert_eq!(scene.dead_letters_ready().await, 0);
    let delays = DelayQueues::default();
    for bucket in delays.buckets() {
        assert_eq!(scene.broker.ready(&delays.name(queue, *bucket)).await, 0);
    }
    scene.finish().await;
}

#[tokio::test]
async fn a_one_second_retry_is_not_held_up_by_a_job_scheduled_in_an_hour() {
    let scene = Scene::of(flaky_each_second).start().await;
    let queue = <flaky_each_second as Job>::QUEUE;

    let later = scene
        .client
        .enqueue_in(flaky_each_second, 0, Duration::from_secs(3600))
        .await
        .unwrap()
        .to_string();
    let id = scene.enqueue(flaky_each_second, 1).await;
    let ran = wait_for_runs(queue, &id, 2).await;
    assert_eq!(ran[1].attempt, 1);
    assert_gap(
        "retry behind a 1 h job",
        ran[1].at_ms - ran[0].at_ms,
        1000,
        1000 + LATE_MS,
    );
    let hour_queue = DelayQueues::default().name(queue, Duration::from_secs(3600));
    assert_eq!(
        scene.broker.ready(&hour_queue).await,
        1,
        "the 1 h job waits in its own delay queue"
    );
    assert!(runs_of(queue, &later).is_empty());
    scene.finish().await;
}

#[tokio::test]
async fn scheduled_jobs_run_no_earlier_than_due_even_past_the_largest_bucket() {
    // Buckets of 200 and 500 ms: 1.7 s takes four hops.
    let delays =
        DelayQueues::new([Duration::from_millis(200), Duration::from_millis(500)]).unwrap();
    let scene = Scene::of(scheduled).delay_queues(delays).start().await;
    let queue = <scheduled as Job>::QUEUE;
    let client = &scene.client;

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
    let properties = foreign_properties("foreign-eta", Some("scheduled")).with_headers(headers);
    scene.broker.publish_raw("", queue, b"4", properties).await;

    let past_run = wait_for_runs(queue, &past, 1).await;
    assert!(
        past_run[0].at_ms - start < 1000,
        "a due time in the past runs at once"
    );
    for (id, due) in [
        (hopping.as_str(), start + 1700),
        (timed.as_str(), at_ms),
        ("foreign-eta", foreign_due),
    ] {
        let ran = wait_for_runs(queue, id, 1).await;
        assert!(
            ran[0].at_ms >= due,
            "{id} ran {} ms early",
            due - ran[0].at_ms
        );
        assert_gap(&format!("{id} lateness"), ran[0].at_ms - due, 0, LATE_MS);
        assert_eq!(ran.len(), 1);
    }
    scene.finish().await;
}

#[tokio::test]
async fn spent_retries_and_permanent_errors_land_in_the_dlq_with_their_headers() {
    // `rejects` shares the queue of `never_succeeds`.
    let mut scene = Scene::of(never_succeeds).start().await;
    let queue = <never_succeeds as Job>::QUEUE;

    let spent = scene.enqueue(never_succeeds, 7).await;
    let permanent = scene.enqueue(rejects, 8).await;
    scene.stop_once_dead_lettered(2).await;

    assert_eq!(
        attempts(queue, &spent),
        [0, 1, 2],
        "the first run and 2 retries"
    );
    assert_eq!(runs_of(queue, &permanent).len(), 1, "no retry");
    assert_eq!(scene.ready().await, 0);

    let dead = scene.take_dead_letters().await;
    for (id, body, attempt, error) in [
        (&spent, b"7", 2, "upstream 503 for 7"),
        (&permanent, b"8", 0, "order 8 does not exist"),
    ] {
        let message = find_message(&dead, id);
        let properties = &message.delivery.properties;
        assert_eq!(message.delivery.data, body, "body unchanged");
        assert_eq!(header_u64(properties, HEADER_ATTEMPT), Some(attempt));
        assert_eq!(error_header(message), error);
        assert_eq!(
            header_text(properties, HEADER_QUEUE).as_deref(),
            Some(queue)
        );
        let headers = properties.headers().as_ref().unwrap().inner();
        assert!(
            !headers.contains_key("x-death"),
            "the broker's delay-queue history is left behind"
        );
    }
    scene.finish().await;
}

#[tokio::test]
async fn a_panic_and_a_timeout_are_failed_attempts_that_retry() {
    // `hangs_once` shares the queue of `panics_once`.
    let mut scene = Scene::of(panics_once).start().await;
    let queue = <panics_once as Job>::QUEUE;

    let panicked = scene.enqueue(panics_once, 1).await;
    let hung = scene.enqueue(hangs_once, 2).await;
    for id in [&panicked, &hung] {
        wait_for_runs(queue, id, 2).await;
        assert_eq!(attempts(queue, id), [0, 1]);
    }
    wait_until("the queue is empty", WAIT, || async {
        scene.ready().await == 0
    })
    .await;
    assert!(scene.workers_running(), "a panic does not stop the worker");
    scene.stop_workers().await;
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn an_event_handlers_retry_reaches_only_its_own_queue() {
    let queue = <subscriber_flaky as Job>::QUEUE;
    let exchange = format!("{queue}.events");
    let spy = format!("{queue}.spy");
    let scene = Scene::of(subscriber_flaky).also_queue(&spy).start().await;

    // Pub/sub: a fanout exchange with the handler's queue and another subscriber.
    let channel = scene.broker.channel().await;
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
    for bound in [queue, spy.as_str()] {
        channel
            .queue_bind(
                bound.into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let properties = foreign_properties("event-1", Some("subscriber_flaky"));
    scene
        .broker
        .publish_raw(&exchange, "order.created", b"1", properties)
        .await;

    let ran = wait_for_runs(queue, "event-1", 2).await;
    assert_eq!(ran[1].attempt, 1, "the handler retried");
    assert_eq!(
        scene.broker.ready(&spy).await,
        1,
        "the other subscriber got the event once, not again with the retry"
    );

    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    scene.finish().await;
}

#[tokio::test]
async fn a_deleted_delay_queue_is_declared_again_by_the_client_and_the_worker() {
    let mut scene = Scene::of(flaky_after_delay).start().await;
    let queue = <flaky_after_delay as Job>::QUEUE;
    let shortest = DelayQueues::default().name(queue, Duration::from_millis(100));

    // The client: its delayed publish comes back unroutable, it declares the
    // delay queues again and publishes once more.
    for delete_first in [false, true] {
        if delete_first {
            scene.broker.delete_queue(&shortest).await;
        }
        let id = scene
            .client
            .enqueue_in(flaky_after_delay, 0, Duration::from_millis(50))
            .await
            .unwrap()
            .to_string();
        wait_for_runs(queue, &id, 1).await;
    }

    // The worker: the retry cannot be published, so the failed delivery goes
    // back to the queue, and the worker reconnects and declares the delay
    // queues again; the retry then runs.
    scene.broker.delete_queue(&shortest).await;
    let retried = scene.enqueue(flaky_after_delay, 1).await;
    wait_until(
        "the retry ran after the delay queue came back",
        WAIT,
        || async { attempts(queue, &retried).contains(&1) },
    )
    .await;
    assert!(scene.workers_running());
    scene.stop_workers().await;
    assert_eq!(scene.dead_letters_ready().await, 0);
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_message_in_the_old_full_format_runs_retries_and_dead_letters_as_before() {
    let mut scene = Scene::of(old_format_fails).start().await;
    let queue = <old_format_fails as Job>::QUEUE;
    // Every optional field present, as eda-worker wrote first deliveries
    // before they were made lean, and as a foreign producer may.
    let id = Uuid::new_v4().to_string();
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongLongInt(0));
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(2)
        .with_message_id(id.as_str().into())
        .with_correlation_id(id.as_str().into())
        .with_type(<old_format_fails as Job>::NAME.into())
        .with_timestamp(now_millis() / 1000)
        .with_headers(headers);
    scene.broker.publish_raw("", queue, b"7", properties).await;
    scene.stop_once_dead_lettered(1).await;

    assert_eq!(attempts(queue, &id), [0, 1]);
    let runs = runs_of(queue, &id);
    assert!(
        runs.iter()
            .all(|run| run.correlation_id.as_deref() == Some(id.as_str()))
    );
    let dead = scene.take_dead_letters().await;
    let properties = &dead[0].delivery.properties;
    assert_eq!(properties.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(properties.correlation_id().as_ref().unwrap().as_str(), id);
    assert_eq!(
        properties.content_type().as_ref().unwrap().as_str(),
        CONTENT_TYPE_JSON
    );
    assert_eq!(header_u64(properties, HEADER_ATTEMPT), Some(1));
    assert_eq!(
        header_text(properties, HEADER_QUEUE).as_deref(),
        Some(queue)
    );
    assert!(error_header(&dead[0]).contains("upstream 503 for 7"));
    assert_eq!(dead[0].delivery.data, b"7");
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}
