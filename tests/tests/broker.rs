//! The worker and the broker's topology: a queue declared with other
//! arguments is a clear error; a connection the broker drops is rebuilt.

use eda_worker::{Client, Error, Worker};
use eda_worker_tests::jobs::{MISMATCH_QUEUE, RECONNECT_QUEUE, reconnect_echo, runs};
use eda_worker_tests::{Broker, RunningWorker, WAIT, amqp_url, wait_until, worker_config};
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

/// The RabbitMQ process id of the connection named `name`.
fn connection_pid(name: &str) -> Option<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    listing
        .lines()
        .find(|line| line.contains(&format!("\"{name}\"")))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
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
    let closed = std::process::Command::new("rabbitmqctl")
        .args([
            "close_connection",
            &pid,
            "test: dropping the worker's connection",
        ])
        .output()
        .unwrap();
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
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
