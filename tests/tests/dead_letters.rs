//! Every message that cannot be handled goes to `<queue>.dlq` with its
//! reason, the original is acked, and the worker keeps consuming. (The jobs
//! here have `retries = 0`; retries are in `retries.rs`.)

use eda_worker::Job;
use eda_worker::wire::{
    HEADER_ATTEMPT, HEADER_ETA, HEADER_FAILED_AT, HEADER_QUEUE, header_text, header_u64,
};
use eda_worker_tests::broker::{error_header, find_message, foreign_properties};
use eda_worker_tests::jobs::Numbered;
use eda_worker_tests::jobs::dead_letters::{
    dead_letter_echo, dead_letter_fails, dead_letter_leaks, dead_letter_panics, dead_letter_sleeps,
};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::{Scene, WAIT, now_millis, wait_until};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test]
async fn every_unhandleable_message_is_dead_lettered_with_its_reason_and_the_next_one_runs() {
    let mut scene = Scene::of(dead_letter_echo)
        .worker_config(|config| config.max_message_size(4096))
        .start()
        .await;
    let queue = <dead_letter_echo as Job>::QUEUE;
    let started = now_millis();
    let oversize = format!(r#"{{"n":1,"padding":"{}"}}"#, "x".repeat(5000));

    // (message id, type, body, expected words in x-eda-error), published
    // raw as a foreign or broken producer would.
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
        let properties = foreign_properties(id, *kind);
        scene.broker.publish_raw("", queue, body, properties).await;
    }
    // A due time past the horizon (366 days by default) is taken for a
    // mistake; one that is not a time runs at once.
    let a_year_and_a_day = 367 * 24 * 3600 * 1000;
    let due = |value: AMQPValue| {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_ETA.into(), value);
        headers
    };
    let far = i64::try_from(now_millis() + a_year_and_a_day).unwrap();
    let properties = foreign_properties("far-eta", Some("dead_letter_echo"))
        .with_headers(due(AMQPValue::LongLongInt(far)));
    scene
        .broker
        .publish_raw("", queue, br#"{"n":10}"#, properties)
        .await;
    let properties = foreign_properties("bad-eta", Some("dead_letter_echo"))
        .with_headers(due(AMQPValue::LongString("soon".into())));
    scene
        .broker
        .publish_raw("", queue, br#"{"n":11}"#, properties)
        .await;
    let failed = scene.enqueue(dead_letter_fails, Numbered { n: 5 }).await;
    let panicked = scene.enqueue(dead_letter_panics, Numbered { n: 6 }).await;
    let timed_out = scene.enqueue(dead_letter_sleeps, Numbered { n: 7 }).await;
    let leaked = scene.enqueue(dead_letter_leaks, Numbered { n: 9 }).await;
    let good = scene.enqueue(dead_letter_echo, Numbered { n: 8 }).await;

    wait_until("the good message ran", WAIT, || async {
        runs(queue).iter().any(|run| run.message_id == good)
    })
    .await;
    scene.wait_for_dead_letters(10).await;
    assert!(
        scene.workers_running(),
        "bad messages do not stop the worker"
    );
    scene.stop_workers().await;

    assert_eq!(scene.ready().await, 0, "every original was acked");
    let dead = scene.take_dead_letters().await;
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
    expectations.push((
        "far-eta".to_owned(),
        br#"{"n":10}"#,
        "ahead, past the horizon of",
    ));
    // A password in the handler's error text is redacted before it is persisted.
    expectations.push((
        leaked,
        br#"{"n":9}"#,
        "GET https://mailer:***@mail.example/send/9 refused",
    ));
    for (id, body, words) in expectations {
        let message = find_message(&dead, &id);
        let properties = &message.delivery.properties;
        assert_eq!(message.delivery.data, body, "{id}: body unchanged");
        let error = error_header(message);
        assert!(
            error.contains(words),
            "{id}: x-eda-error {error:?} should say {words:?}"
        );
        assert!(
            !error.contains("s3cret"),
            "{id}: {error:?} shows a password"
        );
        assert_eq!(
            header_text(properties, HEADER_QUEUE).as_deref(),
            Some(queue),
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
    let mut ran: Vec<String> = runs(queue).into_iter().map(|run| run.message_id).collect();
    let mut expected = vec!["bad-eta".to_owned(), good];
    ran.sort();
    expected.sort();
    assert_eq!(
        ran, expected,
        "only the good message and the one with an unparsable due time ran"
    );
    scene.finish().await;
}
