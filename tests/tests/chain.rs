//! `ctx.enqueue`: a job enqueued by a handler goes out only if the handler
//! succeeds, carrying its correlation id; through the outbox in the
//! handler's transaction with a database, published before the ack without.

use eda_worker::prelude::*;
use eda_worker::{EnqueueOptions, outbox};
use eda_worker_tests::jobs::{
    CHAIN_CHILD_QUEUE, CHAIN_NO_DATABASE_CHILD_QUEUE, CHAIN_NO_DATABASE_QUEUE, CHAIN_QUEUE, Chain,
    chain_parent, chain_parent_without_database,
};
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, drop_schema, fresh_database, wait_until, worker_config,
};

/// Runs one parent that succeeds and one that fails, and checks that exactly
/// the successful one's child was sent, with the parent's correlation id.
async fn check<J: Job<Args = Chain>>(
    parent: J,
    queue: &str,
    child_queue: &str,
    database: Option<&eda_worker::postgres::Database>,
) {
    let broker = Broker::connect().await;
    broker.reset(queue).await;
    broker.reset(child_queue).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let mut config = worker_config();
    if let Some(database) = database {
        config = config.database(database.clone());
    }
    let worker = RunningWorker::start(&broker, queue, config).await;

    let failing = Chain { n: 1, fail: true };
    client
        .enqueue_with(
            parent,
            failing,
            EnqueueOptions::default().correlation_id("req-fail"),
        )
        .await
        .unwrap();
    wait_until("the failing parent is dead-lettered", WAIT, || async {
        broker.ready(&format!("{queue}.dlq")).await == 1
    })
    .await;
    let succeeding = Chain { n: 2, fail: false };
    client
        .enqueue_with(
            parent,
            succeeding,
            EnqueueOptions::default().correlation_id("req-ok"),
        )
        .await
        .unwrap();
    wait_until("the child is sent", WAIT, || async {
        broker.ready(child_queue).await == 1
    })
    .await;
    worker.stop().await.unwrap();
    if let Some(database) = database {
        assert_eq!(outbox::status(database).await.unwrap().pending, 0);
    }
    let child = broker.get(child_queue).await.expect("one child");
    assert_eq!(
        child.delivery.data, b"2",
        "only the successful parent's child"
    );
    assert_eq!(
        child
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        Some("req-ok".to_owned()),
        "the parent's correlation id is carried into the job it caused"
    );
    assert!(
        broker.get(child_queue).await.is_none(),
        "the failing parent sent nothing"
    );
    client.close().await.unwrap();
    broker.reset(child_queue).await;
    broker.cleanup(queue).await;
}

#[tokio::test]
async fn with_a_database_children_go_through_the_outbox_in_the_handlers_transaction() {
    let database = fresh_database("eda_test_chain").await;
    database.migrate().await.unwrap();
    check(
        chain_parent,
        CHAIN_QUEUE,
        CHAIN_CHILD_QUEUE,
        Some(&database),
    )
    .await;
    drop_schema(&database).await;
    database.close().await;
}

#[tokio::test]
async fn without_a_database_children_are_published_before_the_ack() {
    check(
        chain_parent_without_database,
        CHAIN_NO_DATABASE_QUEUE,
        CHAIN_NO_DATABASE_CHILD_QUEUE,
        None,
    )
    .await;
}

#[tokio::test]
async fn in_a_unit_test_enqueued_jobs_are_collected() {
    let ctx = JobContext::for_test();
    chain_parent_without_database
        .call(ctx.clone(), Chain { n: 5, fail: false })
        .await
        .unwrap();
    assert_eq!(
        ctx.enqueued(),
        [(
            "chain_child_without_database".to_owned(),
            serde_json::json!(5)
        )]
    );
}
