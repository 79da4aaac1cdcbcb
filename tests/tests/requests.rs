//! Request-reply as a foreign client does it (classic RPC, as the pika
//! examples: an exclusive reply queue, `reply_to` and its own
//! `correlation_id`): a typed reply on success, the handler's error on a
//! permanent failure, one reply after a retry, and a request whose deadline
//! passed acked without running.

use std::collections::HashMap;

use eda_worker::prelude::*;
use eda_worker::wire::{
    HEADER_DEADLINE, HEADER_ERROR, HEADER_ERROR_KIND, HEADER_REQUEST_ID, header_text,
};
use eda_worker_tests::jobs::requests::{Quote, QuoteRequest, quote, quote_once};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::{Scene, WAIT, now_millis, wait_until};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// A request for `job`, from a foreign client: its own message id and
/// correlation id, replies to `reply_to`.
fn request<J: Job>(_job: J, id: &str, correlation_id: &str, reply_to: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_type(J::NAME.into())
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation_id.into())
}

/// The caller's reply queue (server-named, exclusive) and its consumer.
async fn reply_queue(channel: &lapin::Channel) -> (String, lapin::Consumer) {
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the reply queue");
    let replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "caller".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the replies");
    (reply_queue.name().as_str().to_owned(), replies)
}

/// Publishes a request to `queue` and waits for the broker to take it.
async fn send_request(
    channel: &lapin::Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish the request")
        .await
        .expect("publish confirm");
}

/// The next reply, within [`WAIT`].
async fn next_reply(replies: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("a reply in time")
        .expect("the reply consumer runs")
        .expect("a reply")
}

#[tokio::test]
async fn a_request_the_inbox_already_processed_gets_a_duplicate_reply() {
    let scene = Scene::of(quote_once)
        .database("eda_test_rpc_dedup")
        .start()
        .await;
    let queue = <quote_once as Job>::QUEUE;
    let channel = scene.broker.channel().await;
    let (reply_to, mut replies) = reply_queue(&channel).await;
    let body = serde_json::to_vec(&QuoteRequest {
        item: "tea".into(),
        quantity: 1,
    })
    .expect("JSON");
    let mut kinds = Vec::new();
    // The same request twice (a caller's retry with the same message id).
    for _ in 0..2 {
        let properties = request(quote_once, "same-request", "c-same", &reply_to);
        send_request(&channel, queue, &body, properties).await;
        let reply = next_reply(&mut replies).await;
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some("c-same")
        );
        kinds.push(header_text(&reply.properties, HEADER_ERROR_KIND));
    }
    assert_eq!(kinds, [None, Some("duplicate".to_owned())]);
    assert_eq!(runs(queue).len(), 1, "it ran once");
    scene.finish().await;
}

#[tokio::test]
async fn a_foreign_caller_gets_one_reply_per_request_on_its_final_outcome() {
    let scene = Scene::of(quote).start().await;
    let queue = <quote as Job>::QUEUE;
    let channel = scene.broker.channel().await;
    let (reply_to, mut replies) = reply_queue(&channel).await;

    let send =
        |id: &'static str, correlation_id: &'static str, item: &str, deadline: Option<u64>| {
            let properties = request(quote, id, correlation_id, &reply_to);
            let properties = match deadline {
                Some(deadline) => {
                    let mut headers = FieldTable::default();
                    headers.insert(
                        HEADER_DEADLINE.into(),
                        AMQPValue::LongLongInt(i64::try_from(deadline).expect("ms")),
                    );
                    properties.with_headers(headers)
                }
                None => properties,
            };
            let body = serde_json::to_vec(&QuoteRequest {
                item: item.to_owned(),
                quantity: 3,
            })
            .expect("JSON");
            let channel = channel.clone();
            async move { send_request(&channel, queue, &body, properties).await }
        };
    // Past its deadline: acked without running, no reply.
    send("expired", "c-expired", "tea", Some(now_millis() - 1_000)).await;
    send("ok", "c-ok", "tea", Some(now_millis() + 60_000)).await;
    send("permanent", "c-permanent", "unknown", None).await;
    send("retried", "c-retried", "flaky", None).await;

    let mut got: HashMap<String, Delivery> = HashMap::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 3 {
            let delivery = replies
                .next()
                .await
                .expect("the reply consumer runs")
                .expect("a reply");
            let correlation_id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string())
                .expect("a reply carries the request's correlation id");
            assert!(
                got.insert(correlation_id.clone(), delivery).is_none(),
                "one reply per request: {correlation_id} twice"
            );
        }
    })
    .await
    .expect("three replies in time");

    let ok = &got["c-ok"];
    let body: Quote = serde_json::from_slice(&ok.data).expect("a typed reply");
    assert_eq!(
        body,
        Quote {
            item: "tea".into(),
            cents: 750
        }
    );
    assert_eq!(
        header_text(&ok.properties, HEADER_REQUEST_ID).as_deref(),
        Some("ok")
    );
    assert!(header_text(&ok.properties, HEADER_ERROR_KIND).is_none());

    let permanent = &got["c-permanent"];
    assert_eq!(permanent.data, b"null");
    assert_eq!(
        header_text(&permanent.properties, HEADER_ERROR_KIND).as_deref(),
        Some("permanent")
    );
    let error = header_text(&permanent.properties, HEADER_ERROR).unwrap_or_default();
    assert!(error.contains("no such item"), "{error}");

    let retried = &got["c-retried"];
    let body: Quote = serde_json::from_slice(&retried.data).expect("the reply after the retry");
    assert_eq!(body.item, "flaky");
    assert_eq!(
        runs(queue)
            .iter()
            .filter(|run| run.message_id == "retried")
            .count(),
        2,
        "one reply, after the retry succeeded"
    );

    wait_until("every request is settled", WAIT, || async {
        scene.broker.ready(queue).await == 0
    })
    .await;
    assert!(
        runs(queue).iter().all(|run| run.message_id != "expired"),
        "a request past its deadline does not run"
    );
    // Neither run nor dead-lettered: so no reply went to it either.
    assert_eq!(
        scene.dead_letters_ready().await,
        1,
        "only the permanent failure"
    );
    scene.finish().await;
}
