//! The worker and the broker's topology: a queue declared with other
//! arguments is a clear error; a connection the broker drops is rebuilt.

use eda_worker::{Client, Error, Worker};
use eda_worker_tests::jobs::{
    DELETED_QUEUE, DLQ_RECOVERY_QUEUE, MISMATCH_QUEUE, RECONNECT_QUEUE, always_fails,
    deleted_queue_echo, reconnect_echo, runs,
};
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, close_connection, connection_pid, wait_until,
    worker_config,
};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_queue_declared_with_other_arguments_is_named_with_the_differing_argument() {
    let broker = Broker::connect().await;
    broker.reset(MISMATCH_QUEUE).await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    broker
        .channel()
        .await
        .queue_declare(MISMATCH_QUEUE.into(), durable, arguments)
        .await
        .unwrap();

    let worker = Worker::new(worker_config().queues([MISMATCH_QUEUE])).unwrap();
    let error = worker
        .run(CancellationToken::new())
        .await
        .expect_err("the worker refuses to start");
    let text = error.to_string();
    assert!(
        matches!(error, Error::QueueMismatch { ref queue, .. } if queue == MISMATCH_QUEUE),
        "{text}"
    );
    assert!(text.contains("x-max-length"), "names the argument: {text}");
    assert!(text.contains("delete the queue"), "says what to do: {text}");

    broker.cleanup(MISMATCH_QUEUE).await;
}

#[tokio::test]
async fn the_worker_rebuilds_its_consumers_when_the_broker_drops_the_connection() {
    let broker = Broker::connect().await;
    broker.reset(RECONNECT_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let name = format!("eda-test-reconnect-{}", uuid::Uuid::new_v4());
    let worker = RunningWorker::start(
        &broker,
        RECONNECT_QUEUE,
        worker_config().connection_name(&name),
    )
    .await;
    client.enqueue(reconnect_echo, 1).await.unwrap();
    wait_until("the first job ran", WAIT, || async {
        runs(RECONNECT_QUEUE).len() == 1
    })
    .await;

    let pid = connection_pid(&name).expect("the worker's connection is listed");
    close_connection(&pid);
    wait_until("the worker has a new connection", WAIT, || async {
        connection_pid(&name).is_some_and(|new_pid| new_pid != pid)
    })
    .await;

    client.enqueue(reconnect_echo, 2).await.unwrap();
    wait_until("the second job ran", WAIT, || async {
        runs(RECONNECT_QUEUE).len() == 2
    })
    .await;
    assert!(worker.is_running());
    worker.stop().await.unwrap();
    let args: Vec<_> = runs(RECONNECT_QUEUE)
        .into_iter()
        .map(|run| run.args)
        .collect();
    assert_eq!(args, [serde_json::json!(1), serde_json::json!(2)]);
    assert_eq!(broker.ready(RECONNECT_QUEUE).await, 0);

    client.close().await.unwrap();
    broker.cleanup(RECONNECT_QUEUE).await;
}

#[tokio::test]
async fn a_queue_deleted_under_a_running_worker_is_declared_again_and_consumed() {
    let broker = Broker::connect().await;
    broker.reset(DELETED_QUEUE).await;
    let worker = RunningWorker::start(&broker, DELETED_QUEUE, worker_config()).await;
    broker.reset(DELETED_QUEUE).await;
    // The broker cancels the consumer; the worker rebuilds its session, which
    // declares the queue again and consumes it.
    wait_until("the worker consumes the new queue", WAIT, || async {
        broker.consumers(DELETED_QUEUE).await == 1
    })
    .await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    client.enqueue(deleted_queue_echo, 7).await.unwrap();
    wait_until("the job ran", WAIT, || async {
        runs(DELETED_QUEUE).len() == 1
    })
    .await;
    assert!(worker.is_running());
    worker.stop().await.unwrap();

    client.close().await.unwrap();
    broker.cleanup(DELETED_QUEUE).await;
}

#[tokio::test]
async fn a_deleted_dead_letter_queue_is_declared_again_and_the_failure_still_lands_there() {
    const DLQ: &str = "eda-test.dlq-recovery.dlq";
    let broker = Broker::connect().await;
    broker.reset(DLQ_RECOVERY_QUEUE).await;
    let worker = RunningWorker::start(&broker, DLQ_RECOVERY_QUEUE, worker_config()).await;
    broker
        .channel()
        .await
        .queue_delete(DLQ.into(), lapin::options::QueueDeleteOptions::default())
        .await
        .unwrap();

    let client = Client::connect(&amqp_url()).await.unwrap();
    let id = client.enqueue(always_fails, 3).await.unwrap().to_string();
    // The first dead-lettering is unroutable: the message goes back to its queue, the
    // worker reconnects (declaring the DLQ again), and the next attempt lands there.
    wait_until("the dead letter arrived", WAIT, || async {
        broker.ready(DLQ).await == 1
    })
    .await;
    worker.stop().await.unwrap();
    let dead = broker.get(DLQ).await.expect("the dead letter");
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(id)
    );
    let error =
        eda_worker::wire::header_text(&dead.delivery.properties, eda_worker::wire::HEADER_ERROR);
    assert_eq!(error.as_deref(), Some("record 3 does not exist"));
    assert_eq!(
        broker.ready(DLQ_RECOVERY_QUEUE).await,
        0,
        "nothing left behind"
    );

    client.close().await.unwrap();
    broker.cleanup(DLQ_RECOVERY_QUEUE).await;
}
