//! Every message that cannot be handled goes to `<queue>.dlq` with its
//! reason, the original is acked, and the worker keeps consuming. (The jobs
//! here have `retries = 0`; retries are in `retries.rs`.)

use eda_worker::Client;
use eda_worker::wire::{
    HEADER_ATTEMPT, HEADER_ERROR, HEADER_FAILED_AT, HEADER_QUEUE, header_text, header_u64,
};
use eda_worker_tests::jobs::{
    DEAD_LETTER_QUEUE, Numbered, dead_letter_echo, dead_letter_fails, dead_letter_panics,
    dead_letter_sleeps, runs,
};
use eda_worker_tests::now_millis;
use eda_worker_tests::{Broker, RunningWorker, WAIT, amqp_url, wait_until, worker_config};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;

const DLQ: &str = "eda-test.dead-letters.dlq";

/// Publishes a raw message, as a foreign or broken producer would.
async fn publish_raw(broker: &Broker, kind: Option<&str>, id: &str, body: &[u8]) {
    let mut properties = BasicProperties::default().with_message_id(id.into());
    if let Some(kind) = kind {
        properties = properties.with_type(kind.into());
    }
    broker
        .channel()
        .await
        .basic_publish(
            "".into(),
            DEAD_LETTER_QUEUE.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn every_unhandleable_message_is_dead_lettered_with_its_reason_and_the_next_one_runs() {
    let broker = Broker::connect().await;
    broker.reset(DEAD_LETTER_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let config = worker_config().max_message_size(4096);
    let worker = RunningWorker::start(&broker, DEAD_LETTER_QUEUE, config).await;
    let started = now_millis();
    let oversize = format!(r#"{{"n":1,"padding":"{}"}}"#, "x".repeat(5000));

    // (message id, body, expected words in x-eda-error)
    let poison: Vec<(&str, Option<&str>, &[u8], &str)> = vec![
        (
            "bad-json",
            Some("dead_letter_echo"),
            b"{not json",
            "body is not valid JSON arguments for job `dead_letter_echo`",
        ),
        (
            "wrong-type",
            Some("dead_letter_echo"),
            br#"{"n":"seven"}"#,
            "invalid type: string \"seven\", expected u32",
        ),
        (
            "no-type",
            None,
            br#"{"n":1}"#,
            "message has no `type` property",
        ),
        (
            "unknown-job",
            Some("no_such_job"),
            br#"{"n":1}"#,
            "no job named `no_such_job` is consumed from queue `eda-test.dead-letters`",
        ),
        (
            "oversize",
            Some("dead_letter_echo"),
            oversize.as_bytes(),
            "message is 5020 bytes, more than the maximum message size of 4096 bytes",
        ),
    ];
    for (id, kind, body, _) in &poison {
        publish_raw(&broker, *kind, id, body).await;
    }
    let failed = client
        .enqueue(dead_letter_fails, Numbered { n: 5 })
        .await
        .unwrap()
        .to_string();
    let panicked = client
        .enqueue(dead_letter_panics, Numbered { n: 6 })
        .await
        .unwrap()
        .to_string();
    let timed_out = client
        .enqueue(dead_letter_sleeps, Numbered { n: 7 })
        .await
        .unwrap()
        .to_string();
    let good = client
        .enqueue(dead_letter_echo, Numbered { n: 8 })
        .await
        .unwrap()
        .to_string();

    wait_until("the good message ran", WAIT, || async {
        runs(DEAD_LETTER_QUEUE)
            .iter()
            .any(|run| run.message_id == good)
    })
    .await;
    wait_until("8 dead letters arrived", WAIT, || async {
        broker.ready(DLQ).await == 8
    })
    .await;
    assert!(worker.is_running(), "bad messages do not stop the worker");
    worker.stop().await.unwrap();

    assert_eq!(
        broker.ready(DEAD_LETTER_QUEUE).await,
        0,
        "every original was acked"
    );
    let dead = broker.drain(DLQ).await;
    let find = |id: &str| {
        dead.iter()
            .find(|message| {
                message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|m| m.as_str() == id)
            })
            .unwrap_or_else(|| panic!("message {id} is in the DLQ"))
    };
    let mut expectations: Vec<(String, &[u8], &str)> = poison
        .iter()
        .map(|(id, _, body, words)| (id.to_string(), *body, *words))
        .collect();
    expectations.push((failed, br#"{"n":5}"#, "smtp server said no to 5"));
    expectations.push((
        panicked,
        br#"{"n":6}"#,
        "handler panicked: handler exploded on 6",
    ));
    expectations.push((timed_out, br#"{"n":7}"#, "handler timed out after 200ms"));
    for (id, body, words) in expectations {
        let message = find(&id);
        let properties = &message.delivery.properties;
        assert_eq!(message.delivery.data, body, "{id}: body unchanged");
        let error = header_text(properties, HEADER_ERROR).unwrap_or_default();
        assert!(
            error.contains(words),
            "{id}: x-eda-error {error:?} should say {words:?}"
        );
        assert_eq!(
            header_text(properties, HEADER_QUEUE).as_deref(),
            Some(DEAD_LETTER_QUEUE),
            "{id}: x-eda-queue"
        );
        assert_eq!(
            header_u64(properties, HEADER_ATTEMPT),
            Some(0),
            "{id}: x-eda-attempt"
        );
        let failed_at = header_u64(properties, HEADER_FAILED_AT).expect("x-eda-failed-at");
        assert!(
            failed_at >= started && failed_at <= now_millis(),
            "{id}: x-eda-failed-at {failed_at}"
        );
        assert_eq!(
            *properties.delivery_mode(),
            Some(2),
            "{id}: dead letters are persistent"
        );
    }
    let ran = runs(DEAD_LETTER_QUEUE);
    assert_eq!(ran.len(), 1, "only the good message ran: {ran:?}");

    client.close().await.unwrap();
    broker.cleanup(DEAD_LETTER_QUEUE).await;
}
