//! Follow-up jobs, enqueued by a handler with `ctx.enqueue`: they go out
//! only if the handler succeeds, carrying its correlation id; through the
//! outbox in the handler's transaction with a database, published before the
//! ack without; and `tx.enqueue` while the handler holds its transaction.

use eda_worker::prelude::*;
use eda_worker::{EnqueueOptions, outbox};
use eda_worker_tests::jobs::follow_ups::{
    Chain, chain_child, chain_child_without_database, chain_parent, chain_parent_without_database,
    enqueues_while_holding_the_tx, tx_held_child,
};
use eda_worker_tests::{Scene, WAIT, wait_until};

/// Runs one `parent` that succeeds and one that fails, and checks that
/// exactly the successful one's `child` was sent, with the parent's
/// correlation id. With `schema`, the worker has a database.
async fn check<P: Job<Args = Chain>, C: Job>(parent: P, child: C, schema: Option<&str>) {
    let mut builder = Scene::of(parent).also(child);
    if let Some(schema) = schema {
        builder = builder.database(schema);
    }
    let mut scene = builder.start().await;
    let child_queue = C::QUEUE;

    for (n, fail, correlation_id) in [(1, true, "req-fail"), (2, false, "req-ok")] {
        scene
            .enqueue_with(
                parent,
                Chain { n, fail },
                EnqueueOptions::default().correlation_id(correlation_id),
            )
            .await;
        if fail {
            scene.wait_for_dead_letters(1).await;
        }
    }
    wait_until("the child is sent", WAIT, || async {
        scene.broker.ready(child_queue).await == 1
    })
    .await;
    scene.stop_workers().await;
    if schema.is_some() {
        let status = outbox::status(scene.database()).await.unwrap();
        assert_eq!(status.pending, 0);
    }
    let child = scene.broker.get(child_queue).await.expect("one child");
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
        scene.broker.get(child_queue).await.is_none(),
        "the failing parent sent nothing"
    );
    scene.finish().await;
}

#[tokio::test]
async fn with_a_database_children_go_through_the_outbox_in_the_handlers_transaction() {
    check(chain_parent, chain_child, Some("eda_test_chain")).await;
}

#[tokio::test]
async fn without_a_database_children_are_published_before_the_ack() {
    check(
        chain_parent_without_database,
        chain_child_without_database,
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

#[tokio::test]
async fn enqueueing_while_holding_the_transaction_is_an_error_and_tx_enqueue_works() {
    let mut scene = Scene::of(enqueues_while_holding_the_tx)
        .also(tx_held_child)
        .database("eda_test_tx_held")
        .start()
        .await;
    let child_queue = <tx_held_child as Job>::QUEUE;
    scene.enqueue(enqueues_while_holding_the_tx, 7).await;
    // The relay inside the worker sends the child the handler put in the outbox.
    wait_until("the child arrives", WAIT, || async {
        scene.broker.ready(child_queue).await == 1
    })
    .await;
    scene.stop_workers().await;
    assert_eq!(scene.dead_letters_ready().await, 0);
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}
