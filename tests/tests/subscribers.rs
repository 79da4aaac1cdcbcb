//! Subscribing: the worker binds each subscriber's queue, three subscribers
//! of one event each run it once, a subscriber's retry reaches only its own
//! queue, two event types share a queue dispatched by type, and a raw
//! wildcard subscriber gets exactly the matching keys.

use std::collections::BTreeMap;

use eda_worker::prelude::*;
use eda_worker_tests::jobs::events::{
    OrderArchived, OrderCancelled, OrderShipped, PaymentDone, archive_order, audit_orders,
    bill_shipment, mail_shipment, ship_from_stock,
};
use eda_worker_tests::jobs::{Run, runs};
use eda_worker_tests::{Broker, Scene, WAIT, wait_until, worker_command};

/// The runs of `queue`, counted by message id.
fn by_message(runs: &[Run]) -> BTreeMap<String, usize> {
    let mut counted = BTreeMap::new();
    for run in runs {
        *counted.entry(run.message_id.clone()).or_default() += 1;
    }
    counted
}

#[tokio::test]
async fn each_subscriber_runs_an_event_once_and_retries_on_its_own_queue() {
    let exchange = <OrderShipped as Event>::EXCHANGE;
    let broker = Broker::connect().await;
    broker.delete_exchange(exchange).await;
    let queues = [
        <ship_from_stock as Job>::QUEUE,
        <bill_shipment as Job>::QUEUE,
        <mail_shipment as Job>::QUEUE,
        <audit_orders as Job>::QUEUE,
    ];
    let [inventory, billing, email, audit] = queues;
    let mut scene = Scene::of(ship_from_stock)
        .also(bill_shipment)
        .also(mail_shipment)
        .also(audit_orders)
        .workers(0)
        .start()
        .await;
    // Each worker declares the exchange and binds its queue before it consumes.
    for queue in queues {
        scene.start_worker_on(queue).await;
    }

    let mut shipped = Vec::new();
    for order in 1..=3 {
        let published = scene
            .client
            .publish(OrderShipped { order })
            .await
            .expect("publish");
        assert!(published.routed);
        shipped.push(published.message_id.to_string());
    }
    let cancelled = scene
        .client
        .publish(OrderCancelled { order: 4 })
        .await
        .expect("publish");
    assert!(cancelled.routed);
    let cancelled = cancelled.message_id.to_string();
    let payment = scene
        .client
        .publish(PaymentDone { order: 5 })
        .await
        .expect("publish");
    assert!(
        !payment.routed,
        "no subscriber's binding matches `payment.done`, the wildcard's included"
    );

    wait_until("every subscriber ran its events", WAIT, || async {
        runs(inventory).len() == 4
            && runs(email).len() == 3
            && runs(billing).len() == 6
            && runs(audit).len() == 4
    })
    .await;
    wait_until("the queues are settled", WAIT, || async {
        let mut empty = true;
        for queue in queues {
            empty &= scene.broker.ready(queue).await == 0;
        }
        empty
    })
    .await;

    let expected: BTreeMap<String, usize> = shipped.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(
        by_message(&runs(email)),
        expected,
        "the email subscriber ran each once"
    );
    let mut with_cancelled = expected.clone();
    with_cancelled.insert(cancelled.clone(), 1);
    assert_eq!(
        by_message(&runs(inventory)),
        with_cancelled,
        "both subscribers of the shared queue ran their own events once"
    );
    let cancelled_run = runs(inventory)
        .into_iter()
        .find(|run| run.message_id == cancelled)
        .expect("restock ran");
    assert_eq!(cancelled_run.args, serde_json::json!({ "order": 4 }));

    // The billing subscriber failed each first attempt; its retry came back
    // to its queue only.
    let billed = runs(billing);
    let twice: BTreeMap<String, usize> = shipped.iter().map(|id| (id.clone(), 2)).collect();
    assert_eq!(by_message(&billed), twice);
    for id in &shipped {
        let mut attempts: Vec<u32> = billed
            .iter()
            .filter(|run| &run.message_id == id)
            .map(|run| run.attempt)
            .collect();
        attempts.sort_unstable();
        assert_eq!(attempts, [0, 1]);
    }
    for queue in [inventory, email, audit] {
        assert!(
            runs(queue).iter().all(|run| run.attempt == 0),
            "{queue} saw no retry of another subscriber"
        );
    }

    // The raw subscriber saw what arrived: routing key and type.
    let mut seen: Vec<(String, String)> = runs(audit)
        .iter()
        .map(|run| {
            (
                run.args["routing_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                run.args["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("order.cancelled".to_owned(), "order.cancelled".to_owned()),
            ("order.shipped".to_owned(), "order.shipped".to_owned()),
            ("order.shipped".to_owned(), "order.shipped".to_owned()),
            ("order.shipped".to_owned(), "order.shipped".to_owned()),
        ]
    );
    for queue in queues {
        assert_eq!(scene.broker.ready(&format!("{queue}.dlq")).await, 0);
    }

    scene.finish().await;
    broker.delete_exchange(exchange).await;
    broker.close().await;
}

#[tokio::test]
async fn an_event_published_after_topology_declare_waits_for_the_first_worker() {
    let exchange = <OrderArchived as Event>::EXCHANGE;
    let queue = <archive_order as Job>::QUEUE;
    let broker = Broker::connect().await;
    broker.delete_exchange(exchange).await;
    let mut scene = Scene::of(archive_order).workers(0).start().await;
    let before = scene
        .client
        .publish(OrderArchived { order: 1 })
        .await
        .expect("publish");
    assert!(!before.routed, "nothing is bound before the deploy step");

    let output = worker_command!("topology", "declare", "--queues", queue)
        .output()
        .await
        .expect("run worker topology declare");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("declared {queue}")));
    assert_eq!(scene.broker.consumers(queue).await, 0, "no worker runs yet");
    let published = scene
        .client
        .publish(OrderArchived { order: 2 })
        .await
        .expect("publish");
    assert!(published.routed, "the queue is bound");
    assert_eq!(scene.broker.ready(queue).await, 1);
    assert!(
        scene.broker.exists(&format!("{queue}.dlq")).await,
        "its dead-letter queue is declared"
    );
    let delays = eda_worker::DelayQueues::default();
    for bucket in delays.buckets() {
        let delay_queue = delays.name(queue, *bucket);
        assert!(
            scene.broker.exists(&delay_queue).await,
            "{delay_queue} is declared"
        );
    }

    scene.start_worker_on(queue).await;
    wait_until("the first worker ran the event", WAIT, || async {
        !runs(queue).is_empty()
    })
    .await;
    let ran = runs(queue);
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].message_id, published.message_id.to_string());
    assert_eq!(ran[0].args, serde_json::json!({ "order": 2 }));

    scene.finish().await;
    broker.delete_exchange(exchange).await;
    broker.close().await;
}

/// Starts a worker on the subscriber's queue (which binds it), then one on
/// the publishing job's queue, and returns the subscriber's runs once it ran.
async fn published_by_a_handler(
    scene: &mut Scene,
    publisher_queue: &'static str,
    subscriber_queue: &'static str,
) -> Vec<Run> {
    scene.start_worker_on(subscriber_queue).await;
    scene.start_worker_on(publisher_queue).await;
    wait_until("the subscriber ran the handler's event", WAIT, || async {
        !runs(subscriber_queue).is_empty()
    })
    .await;
    runs(subscriber_queue)
}

#[tokio::test]
async fn a_handler_publishes_an_event_with_its_outcome_carrying_its_correlation_id() {
    use eda_worker::EnqueueOptions;
    use eda_worker_tests::jobs::events::{
        InvoiceFiled, ReceiptSent, file_invoice, invoice_filed, receipt_sent, send_receipt,
    };

    // Without a database: published by the worker after the handler succeeded.
    let broker = Broker::connect().await;
    broker
        .delete_exchange(<InvoiceFiled as Event>::EXCHANGE)
        .await;
    let mut scene = Scene::of(file_invoice)
        .also(invoice_filed)
        .workers(0)
        .start()
        .await;
    let options = EnqueueOptions::default().correlation_id("web-request-7");
    let id = scene
        .client
        .enqueue_with(file_invoice, 7, options.clone())
        .await
        .expect("enqueue");
    let (publisher, subscriber) = (<file_invoice as Job>::QUEUE, <invoice_filed as Job>::QUEUE);
    let ran = published_by_a_handler(&mut scene, publisher, subscriber).await;
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].args, serde_json::json!({ "invoice": 7 }));
    assert_eq!(ran[0].correlation_id.as_deref(), Some("web-request-7"));
    assert_ne!(
        ran[0].message_id,
        id.to_string(),
        "the event has an id of its own"
    );
    assert_eq!(runs(publisher).len(), 1);
    scene.finish().await;
    broker
        .delete_exchange(<InvoiceFiled as Event>::EXCHANGE)
        .await;

    // With a database: through the outbox, in the handler's transaction.
    broker
        .delete_exchange(<ReceiptSent as Event>::EXCHANGE)
        .await;
    let mut scene = Scene::of(send_receipt)
        .also(receipt_sent)
        .database("eda_test_events_in_tx")
        .workers(0)
        .start()
        .await;
    scene
        .client
        .enqueue_with(send_receipt, 8, options)
        .await
        .expect("enqueue");
    let (publisher, subscriber) = (<send_receipt as Job>::QUEUE, <receipt_sent as Job>::QUEUE);
    let ran = published_by_a_handler(&mut scene, publisher, subscriber).await;
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].args, serde_json::json!({ "receipt": 8 }));
    assert_eq!(ran[0].correlation_id.as_deref(), Some("web-request-7"));
    scene.finish().await;
    broker
        .delete_exchange(<ReceiptSent as Event>::EXCHANGE)
        .await;
    broker.close().await;
}

#[tokio::test]
async fn one_correlation_id_from_the_web_request_to_a_subscribers_dead_letter() {
    use eda_worker::EnqueueOptions;
    use eda_worker_tests::jobs::events::{RefundRequested, refuse_refund, request_refund};

    let broker = Broker::connect().await;
    broker
        .delete_exchange(<RefundRequested as Event>::EXCHANGE)
        .await;
    let mut scene = Scene::of(request_refund)
        .also(refuse_refund)
        .workers(0)
        .start()
        .await;
    let (publisher, subscriber) = (
        <request_refund as Job>::QUEUE,
        <refuse_refund as Job>::QUEUE,
    );
    scene.start_worker_on(subscriber).await;
    scene.start_worker_on(publisher).await;
    scene
        .client
        .enqueue_with(
            request_refund,
            11,
            EnqueueOptions::default().correlation_id("web-request-11"),
        )
        .await
        .expect("enqueue");
    let dead_letter_queue = eda_worker::dead_letter::queue_name(subscriber);
    wait_until(
        "the subscriber's failure is dead-lettered",
        WAIT,
        || async { scene.broker.ready(&dead_letter_queue).await == 1 },
    )
    .await;
    // web request -> job -> event -> subscriber -> dead letter.
    assert_eq!(
        runs(publisher)[0].correlation_id.as_deref(),
        Some("web-request-11")
    );
    assert_eq!(
        runs(subscriber)[0].correlation_id.as_deref(),
        Some("web-request-11")
    );
    let letter = scene
        .broker
        .get(&dead_letter_queue)
        .await
        .expect("the dead letter");
    assert_eq!(
        letter
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("web-request-11")
    );
    assert_eq!(
        letter
            .delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str()),
        Some("refund.requested")
    );
    scene.finish().await;
    broker
        .delete_exchange(<RefundRequested as Event>::EXCHANGE)
        .await;
    broker.close().await;
}
