//! Publishing events: each exchange kind routes to exactly the queues bound
//! to it, an event no queue takes is confirmed and reported unrouted, an
//! exchange of another kind is a clear error, and an event message is as
//! lean as a job's first delivery.

use eda_worker::prelude::*;
use eda_worker::{Error, ExchangeKind, PublishOptions};
use eda_worker_tests::Broker;
use eda_worker_tests::jobs::events::{
    InvoicePaid, KindClash, LeanEvent, NobodyListens, NotePosted, OrderPlacedEu,
};

async fn client() -> Client {
    Client::connect(&eda_worker_tests::amqp_url())
        .await
        .expect("client connects")
}

/// Deletes `queues` and `exchanges`, before a test (a crashed earlier run)
/// and after it.
async fn clean(broker: &Broker, exchanges: &[&str], queues: &[&str]) {
    for queue in queues {
        broker.delete_queue(queue).await;
    }
    for exchange in exchanges {
        broker.delete_exchange(exchange).await;
    }
}

#[tokio::test]
async fn each_exchange_kind_delivers_to_exactly_the_bound_queues() {
    let broker = Broker::connect().await;
    let exchanges = [
        <NotePosted as Event>::EXCHANGE,
        <InvoicePaid as Event>::EXCHANGE,
        <OrderPlacedEu as Event>::EXCHANGE,
    ];
    let queues = [
        "eda-test.events.fanout-a",
        "eda-test.events.fanout-b",
        "eda-test.events.direct-paid",
        "eda-test.events.direct-void",
        "eda-test.events.topic-star",
        "eda-test.events.topic-hash",
        "eda-test.events.topic-two-words",
        "eda-test.events.topic-us",
    ];
    clean(&broker, &exchanges, &queues).await;
    let (fanout, direct, topic) = (exchanges[0], exchanges[1], exchanges[2]);
    broker
        .declare_exchange(fanout, lapin::ExchangeKind::Fanout)
        .await;
    broker
        .declare_exchange(direct, lapin::ExchangeKind::Direct)
        .await;
    broker
        .declare_exchange(topic, lapin::ExchangeKind::Topic)
        .await;
    broker.bind(queues[0], fanout, "").await;
    broker.bind(queues[1], fanout, "whatever").await;
    broker.bind(queues[2], direct, "invoice.paid").await;
    broker.bind(queues[3], direct, "invoice.void").await;
    broker.bind(queues[4], topic, "order.*.eu").await;
    broker.bind(queues[5], topic, "order.#").await;
    broker.bind(queues[6], topic, "order.*").await;
    broker.bind(queues[7], topic, "order.*.us").await;

    let client = client().await;
    let note = NotePosted {
        text: "hello".into(),
    };
    let published = [
        client.publish(note.clone()).await.expect("fanout publish"),
        client
            .publish(InvoicePaid { invoice: 7 })
            .await
            .expect("direct publish"),
        client
            .publish(OrderPlacedEu { order: 9 })
            .await
            .expect("topic publish"),
    ];
    assert!(published.iter().all(|published| published.routed));

    let expected = [1, 1, 1, 0, 1, 1, 0, 0];
    for (queue, expected) in queues.iter().zip(expected) {
        assert_eq!(broker.ready(queue).await, expected, "messages in {queue}");
    }
    let delivered = broker.get(queues[1]).await.expect("the fanout copy");
    let body: NotePosted = serde_json::from_slice(&delivered.delivery.data).expect("event JSON");
    assert_eq!(body, note);
    assert_eq!(
        delivered
            .delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str()),
        Some("note.posted"),
        "a fanout event's wire name is its `name`"
    );

    client.close().await.expect("close");
    clean(&broker, &exchanges, &queues).await;
    broker.close().await;
}

#[tokio::test]
async fn an_event_no_queue_takes_is_confirmed_and_reported_unrouted() {
    let broker = Broker::connect().await;
    let exchange = <NobodyListens as Event>::EXCHANGE;
    let queue = "eda-test.events.unrouted-late";
    clean(&broker, &[exchange], &[queue]).await;
    let client = client().await;

    // Many at once: unrouted and routed verdicts are each exact.
    let unrouted =
        futures_util::future::join_all((0..50).map(|n| client.publish(NobodyListens { n }))).await;
    for published in &unrouted {
        let published = published
            .as_ref()
            .expect("an unrouted event is not an error");
        assert!(!published.routed);
    }

    // The client declared the exchange: a subscriber can bind now.
    broker.bind(queue, exchange, "nobody.*").await;
    let routed =
        futures_util::future::join_all((0..50).map(|n| client.publish(NobodyListens { n }))).await;
    for published in &routed {
        assert!(published.as_ref().expect("confirmed").routed);
    }
    assert_eq!(
        broker.ready(queue).await,
        50,
        "exactly the routed ones are stored"
    );

    client.close().await.expect("close");
    clean(&broker, &[exchange], &[queue]).await;
    broker.close().await;
}

#[tokio::test]
async fn an_exchange_of_another_kind_is_an_error_naming_both_kinds() {
    let broker = Broker::connect().await;
    let exchange = <KindClash as Event>::EXCHANGE;
    clean(&broker, &[exchange], &[]).await;
    broker
        .declare_exchange(exchange, lapin::ExchangeKind::Fanout)
        .await;
    let client = client().await;

    let error = client
        .publish(KindClash { n: 1 })
        .await
        .expect_err("a topic event cannot use a fanout exchange");
    match &error {
        Error::ExchangeKindMismatch {
            exchange: named,
            declared,
            existing,
        } => {
            assert_eq!(named, exchange);
            assert_eq!(*declared, ExchangeKind::Topic);
            assert_eq!(existing, "fanout");
        }
        other => panic!("expected an exchange kind mismatch, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains(exchange) && text.contains("fanout") && text.contains("topic"),
        "{text}"
    );
    // The client is still usable, and the exchange was left as it was.
    assert!(client.publish(KindClash { n: 2 }).await.is_err());

    client.close().await.expect("close");
    clean(&broker, &[exchange], &[]).await;
    broker.close().await;
}

#[tokio::test]
async fn an_event_message_is_as_lean_as_a_first_delivery() {
    let broker = Broker::connect().await;
    let exchange = <LeanEvent as Event>::EXCHANGE;
    let queue = "eda-test.events.lean";
    clean(&broker, &[exchange], &[queue]).await;
    broker
        .declare_exchange(exchange, lapin::ExchangeKind::Topic)
        .await;
    broker.bind(queue, exchange, "lean.event").await;
    let client = client().await;

    let plain = client.publish(LeanEvent { n: 1 }).await.expect("publish");
    let correlated = client
        .publish_with(
            LeanEvent { n: 2 },
            PublishOptions::default().correlation_id("request-42"),
        )
        .await
        .expect("publish");

    let first = broker.get(queue).await.expect("first event");
    let properties = &first.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(plain.message_id.to_string())
    );
    assert_eq!(
        properties.kind().as_ref().map(|kind| kind.as_str()),
        Some("lean:v1")
    );
    assert!(properties.headers().is_none(), "no header table");
    assert!(properties.content_type().is_none(), "no content_type");
    assert!(properties.correlation_id().is_none(), "no correlation_id");
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(first.delivery.routing_key.as_str(), "lean.event");

    let second = broker.get(queue).await.expect("second event");
    assert_eq!(
        second
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("request-42")
    );
    assert_eq!(
        second
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(correlated.message_id.to_string())
    );

    client.close().await.expect("close");
    clean(&broker, &[exchange], &[queue]).await;
    broker.close().await;
}

#[tokio::test]
async fn an_event_through_the_outbox_is_confirmed_and_its_row_deleted_routed_or_not() {
    use eda_worker::outbox::Outbox;
    use eda_worker_tests::database::{migrated_database, remove_database};
    use eda_worker_tests::jobs::events::InvoiceSent;
    use eda_worker_tests::outbox::{RunningRelay, pending};
    use eda_worker_tests::{WAIT, wait_until};

    let broker = Broker::connect().await;
    let exchange = <InvoiceSent as Event>::EXCHANGE;
    let queue = "eda-test.events.outbox-bound";
    clean(&broker, &[exchange], &[queue]).await;
    let database = migrated_database("eda_test_events_outbox").await;
    let outbox = Outbox::in_schema(database.schema().clone());

    // No subscriber yet: confirmed all the same, and the row goes.
    let mut tx = database.pool().begin().await.expect("begin");
    outbox
        .publish(&mut tx, InvoiceSent { invoice: 1 })
        .await
        .expect("insert the event row");
    tx.commit().await.expect("commit");
    let relay = RunningRelay::start(&database);
    wait_until("the unrouted event's row is deleted", WAIT, || async {
        pending(&database).await == 0
    })
    .await;

    // The relay declared the exchange as the event does: bind and go again.
    broker.bind(queue, exchange, "invoice.*").await;
    let mut tx = database.pool().begin().await.expect("begin");
    let id = outbox
        .publish(&mut tx, InvoiceSent { invoice: 2 })
        .await
        .expect("insert the event row");
    tx.commit().await.expect("commit");
    wait_until("the event reaches the bound queue", WAIT, || async {
        broker.ready(queue).await == 1
    })
    .await;
    // Deleted once confirmed, which comes after the queue has it.
    wait_until("the routed event's row is deleted", WAIT, || async {
        pending(&database).await == 0
    })
    .await;
    let message = broker.get(queue).await.expect("the event");
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|id| id.to_string()),
        Some(id.to_string())
    );
    assert_eq!(
        properties.kind().as_ref().map(|kind| kind.as_str()),
        Some("invoice.sent")
    );
    assert_eq!(message.delivery.routing_key.as_str(), "invoice.sent");
    let body: InvoiceSent = serde_json::from_slice(&message.delivery.data).expect("JSON");
    assert_eq!(body, InvoiceSent { invoice: 2 });

    relay.stop().await;
    remove_database(database).await;
    clean(&broker, &[exchange], &[queue]).await;
    broker.close().await;
}
