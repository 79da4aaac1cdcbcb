//! The worker and the broker's topology: a queue declared with other
//! arguments is a clear error; a connection the broker drops, a queue or a
//! dead-letter queue deleted under a running worker are rebuilt; a URL
//! that lists several nodes is followed to the next when one dies.

use eda_worker::{Client, Error, Job, Worker, WorkerConfig};
use eda_worker_tests::broker::{
    error_header, message_id, unique_connection_name, wait_for_new_connection,
};
use eda_worker_tests::jobs::broker_faults::{
    always_fails, cluster_echo, deleted_queue_echo, mismatched, reconnect_echo,
};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::proxy::Proxy;
use eda_worker_tests::{Scene, WAIT, close_connection, connection_pid, wait_until, worker_config};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_queue_declared_with_other_arguments_is_named_with_the_differing_argument() {
    let scene = Scene::of(mismatched).workers(0).start().await;
    let queue = <mismatched as Job>::QUEUE;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    scene.broker.declare_durable(queue, arguments).await;

    let worker = Worker::new(worker_config().queues([queue])).unwrap();
    let error = worker
        .run(CancellationToken::new())
        .await
        .expect_err("the worker refuses to start");
    let text = error.to_string();
    assert!(
        matches!(error, Error::QueueMismatch { queue: ref named, .. } if named == queue),
        "{text}"
    );
    assert!(text.contains("x-max-length"), "names the argument: {text}");
    assert!(text.contains("delete the queue"), "says what to do: {text}");
    scene.finish().await;
}

#[tokio::test]
async fn the_worker_rebuilds_its_consumers_when_the_broker_drops_the_connection() {
    let name = unique_connection_name("eda-test-reconnect");
    let mut scene = Scene::of(reconnect_echo)
        .worker_config(|config| config.connection_name(&name))
        .start()
        .await;
    let queue = <reconnect_echo as Job>::QUEUE;
    scene.enqueue(reconnect_echo, 1).await;
    wait_until("the first job ran", WAIT, || async {
        runs(queue).len() == 1
    })
    .await;

    let pid = connection_pid(&name).expect("the worker's connection is listed");
    close_connection(&pid);
    wait_for_new_connection(&name, &pid).await;

    scene.enqueue(reconnect_echo, 2).await;
    wait_until("the second job ran", WAIT, || async {
        runs(queue).len() == 2
    })
    .await;
    assert!(scene.workers_running());
    scene.stop_workers().await;
    let args: Vec<_> = runs(queue).into_iter().map(|run| run.args).collect();
    assert_eq!(args, [serde_json::json!(1), serde_json::json!(2)]);
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_queue_deleted_under_a_running_worker_is_declared_again_and_consumed() {
    let scene = Scene::of(deleted_queue_echo).start().await;
    let queue = <deleted_queue_echo as Job>::QUEUE;
    scene.broker.reset(queue).await;
    // The broker cancels the consumer; the worker rebuilds its session, which
    // declares the queue again and consumes it.
    wait_until("the worker consumes the new queue", WAIT, || async {
        scene.broker.consumers(queue).await == 1
    })
    .await;
    scene.enqueue(deleted_queue_echo, 7).await;
    wait_until("the job ran", WAIT, || async { runs(queue).len() == 1 }).await;
    assert!(scene.workers_running());
    scene.finish().await;
}

#[tokio::test]
async fn a_deleted_dead_letter_queue_is_declared_again_and_the_failure_still_lands_there() {
    let mut scene = Scene::of(always_fails).start().await;
    scene.broker.delete_queue(&scene.dead_letter_queue()).await;

    let id = scene.enqueue(always_fails, 3).await;
    // The first dead-lettering is unroutable: the message goes back to its queue, the
    // worker reconnects (declaring the DLQ again), and the next attempt lands there.
    scene.stop_once_dead_lettered(1).await;
    let dead = scene.take_dead_letters().await;
    assert_eq!(dead.len(), 1, "the dead letter");
    assert_eq!(message_id(&dead[0]), id);
    assert_eq!(error_header(&dead[0]), "record 3 does not exist");
    assert_eq!(scene.ready().await, 0, "nothing left behind");
    scene.finish().await;
}

#[tokio::test]
async fn with_several_nodes_in_the_url_the_worker_and_the_client_move_on_when_one_dies() {
    let (first, second) = (Proxy::start().await, Proxy::start().await);
    let nodes = format!("{},{}", first.url(), second.url());
    let scene = Scene::of(cluster_echo).workers(0).start().await;
    let queue = <cluster_echo as Job>::QUEUE;
    let token = CancellationToken::new();
    let config = WorkerConfig::new(nodes.clone())
        .queues([queue])
        .shutdown_timeout(std::time::Duration::from_secs(10));
    let worker = Worker::new(config).expect("config");
    let running = tokio::spawn(worker.run(token.clone()));
    let client = Client::connect(&nodes)
        .await
        .expect("the client connects to the first node");
    client.enqueue(cluster_echo, 1).await.unwrap();
    wait_until("the first job ran", WAIT, || async {
        runs(queue).len() == 1
    })
    .await;
    // The worker's two connections and the client's went to the first node.
    assert_eq!(first.accepted(), 3);
    assert_eq!(second.accepted(), 0);

    // The first node dies: everybody moves on to the second.
    first.down();
    // An enqueue on the connection that died fails (whether it reached the
    // broker is unknown, so the client says so); the next one reconnects.
    if client.enqueue(cluster_echo, 2).await.is_err() {
        client.enqueue(cluster_echo, 2).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !runs(queue)
        .iter()
        .any(|run| run.args == serde_json::json!(2))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second job did not run: runs {:?}, {} ready, {} consumers, connections {} and {}",
            runs(queue),
            scene.ready().await,
            scene.broker.consumers(queue).await,
            first.accepted(),
            second.accepted()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        second.accepted() >= 3,
        "{} connections to the second node",
        second.accepted()
    );
    assert!(!running.is_finished());
    token.cancel();
    running
        .await
        .expect("worker task")
        .expect("the worker stops cleanly");
    client.close().await.unwrap();
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}
