//! A three-node RabbitMQ cluster of the test's own: 10,000 jobs on a quorum
//! queue go through a worker given all three nodes, and the node leading the
//! queue is stopped midway. Nothing is lost (every job's effect committed,
//! once), the worker reconnected, and the dead-letter queue is reachable.
//!
//! Serial (`#[ignore]`, run by `.ci/run` after the parallel suite): three
//! more nodes on a 2-core machine would slow every other test.

use eda_worker::{Client, Job};
use eda_worker_tests::database::{count, effects_table, migrated_database, remove_database};
use eda_worker_tests::jobs::broker_faults::cluster_write;
use eda_worker_tests::jobs::inbox::DbWrite;
use eda_worker_tests::node::{Node, NodeSpec};
use eda_worker_tests::process::{WorkerProcess, database_env};
use eda_worker_tests::{DeadLetters, WAIT, wait_until, worker_command};
use futures_util::StreamExt;

const JOBS: u32 = 10_000;

fn node(label: &str) -> Node {
    Node::start(
        label,
        NodeSpec {
            schedulers: Some(1),
            ..NodeSpec::default()
        },
    )
}

/// `column` of `queue` as `rabbitmqctl list_queues` on `node` shows it.
fn queue_info(node: &Node, queue: &str, column: &str) -> String {
    node.ctl(&["list_queues", "-q", "--no-table-headers", "name", column])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: starts a three-node cluster and stops one node; .ci/run runs it after the parallel suite"]
async fn a_quorum_queue_s_jobs_survive_the_loss_of_its_leader_node() {
    let nodes = [node("cluster-a"), node("cluster-b"), node("cluster-c")];
    nodes[1].join(&nodes[0]);
    nodes[2].join(&nodes[0]);
    let urls = nodes
        .iter()
        .map(Node::amqp_url)
        .collect::<Vec<_>>()
        .join(",");
    let database = migrated_database("eda_test_cluster").await;
    let table = effects_table(&database).await;
    let queue = <cluster_write as Job>::QUEUE;
    let client = Client::connect(&urls).await.expect("the client connects");
    futures_util::stream::iter(0..JOBS)
        .map(|n| client.enqueue(cluster_write, DbWrite::new(&table, n)))
        .buffer_unordered(64)
        .for_each(|enqueued| async move {
            enqueued.expect("confirmed");
        })
        .await;
    let distinct_messages = format!("SELECT count(DISTINCT message_id) FROM {table}");
    let effects = || count(&database, &distinct_messages);

    let mut command = worker_command!("run");
    command.env("AMQP_URL", &urls).envs(database_env(&database));
    let mut worker = WorkerProcess::spawn(command, queue, &["--concurrency", "32", "--no-relay"]);
    wait_until("a fifth of the jobs ran", WAIT * 4, || async {
        effects().await >= i64::from(JOBS / 5)
    })
    .await;

    // Stop the node that leads the job queue: its quorum elects another.
    let leading = queue_info(&nodes[0], queue, "leader");
    let stopped = nodes
        .iter()
        .find(|node| node.name() == leading)
        .unwrap_or_else(|| panic!("the leader {leading:?} is one of the nodes"));
    stopped.ctl(&["stop_app"]);
    let alive = nodes.iter().find(|node| node.name() != leading).unwrap();
    let ran_before = effects().await;
    assert!(ran_before < i64::from(JOBS), "the node stopped midway");

    wait_until("every job ran", WAIT * 6, || async {
        effects().await >= i64::from(JOBS)
    })
    .await;
    assert!(worker.is_running(), "the worker reconnected and runs on");
    assert_ne!(
        queue_info(alive, queue, "leader"),
        leading,
        "a new leader took over"
    );

    // The dead-letter queue is reachable through the nodes still up.
    let dead_letters = DeadLetters::connect(&urls).await.unwrap();
    assert!(dead_letters.list(queue, 10).await.unwrap().is_empty());
    dead_letters.close().await.unwrap();

    // Copies whose acks the failover lost come back, and the inbox acks
    // them without running (the counts come from the new leader's stats).
    wait_until("the job queue is empty", WAIT * 2, || async {
        queue_info(alive, queue, "messages") == "0"
    })
    .await;
    worker.signal("TERM");
    let (status, _) = worker.exit().await;
    assert!(status.success(), "the worker stops cleanly: {status}");
    client.close().await.unwrap();
    // Nothing lost, nothing twice.
    assert_eq!(effects().await, i64::from(JOBS));
    let rows = count(&database, &format!("SELECT count(*) FROM {table}")).await;
    assert_eq!(rows, i64::from(JOBS));
    remove_database(database).await;
}
