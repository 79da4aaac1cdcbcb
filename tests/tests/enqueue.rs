//! Enqueue: confirmed publishes in the wire format of docs/wire-format.md, typed
//! arguments that arrive intact, and loud failures.

use eda_worker::{Client, ClientOptions, EnqueueOptions, Error, Job, MessageId};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eda_worker_tests::broker::{Policy, message_id, unique_connection_name};
use eda_worker_tests::jobs::enqueue::{
    Signup, after_reconnect, confirmed, during_outage, oversized, refused, roundtrip,
    to_deleted_queue, to_kept_queue,
};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::proxy::Proxy;
use eda_worker_tests::{
    Scene, WAIT, amqp_url, close_connection, connection_pid, now_millis, wait_until,
};

fn signup() -> Signup {
    Signup {
        user_id: 42,
        email: "zoë@example.com".into(),
        tags: vec!["beta".into(), "émigré".into()],
        referrer: None,
    }
}

#[tokio::test]
async fn enqueued_message_carries_the_wire_format_and_typed_args_arrive_intact() {
    let mut scene = Scene::of(roundtrip).workers(0).start().await;
    let queue = scene.queue().to_owned();

    // On the wire, before any worker runs: a plain enqueue is lean, with
    // neither a header table nor a content type nor a correlation id.
    let plain = scene.enqueue(roundtrip, signup()).await;
    let message = scene
        .broker
        .get(&queue)
        .await
        .expect("the enqueued message is on the queue");
    let properties = &message.delivery.properties;
    assert_eq!(message_id(&message), plain);
    assert_eq!(plain.len(), 22, "a compact id: {plain}");
    assert!(properties.headers().is_none(), "no header table");
    assert!(properties.content_type().is_none(), "absent means JSON");
    assert!(
        properties.correlation_id().is_none(),
        "absent means the message id"
    );
    assert!(
        properties.timestamp().is_none(),
        "the id holds the enqueue time"
    );
    assert_eq!(properties.kind().as_ref().unwrap().as_str(), "roundtrip");
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let enqueued = MessageId::parse(&plain)
        .and_then(|id| id.created_at())
        .expect("a UUIDv7 id holds its time");
    let since_epoch = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert!(
        since_epoch(enqueued).abs_diff(u128::from(now_millis())) < 60_000,
        "the id's time is now"
    );
    let body: Signup = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body, signup());

    // A request's correlation id is carried.
    let id = scene
        .enqueue_with(
            roundtrip,
            signup(),
            EnqueueOptions::default().correlation_id("req-7"),
        )
        .await;
    let message = scene
        .broker
        .get(&queue)
        .await
        .expect("the enqueued message is on the queue");
    let properties = &message.delivery.properties;
    assert_eq!(message_id(&message), id);
    assert_eq!(
        properties.correlation_id().as_ref().unwrap().as_str(),
        "req-7"
    );
    assert!(properties.headers().is_none(), "no header table");
    let body: Signup = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body, signup());

    // Through a worker, into the typed handler.
    let id = scene.enqueue(roundtrip, signup()).await;
    scene.start_worker().await;
    wait_until("the job ran", WAIT, || async { !runs(&queue).is_empty() }).await;
    scene.stop_workers().await;
    let ran = runs(&queue);
    assert_eq!(ran.len(), 1, "the job ran once: {ran:?}");
    assert_eq!(ran[0].message_id, id.to_string());
    assert_eq!(
        ran[0].correlation_id.as_deref(),
        Some(id.to_string().as_str()),
        "a fresh correlation id is the message id"
    );
    assert_eq!(ran[0].attempt, 0);
    assert_eq!(ran[0].args, serde_json::to_value(signup()).unwrap());
    assert_eq!(scene.ready().await, 0);
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn concurrent_enqueues_share_one_client_and_all_are_confirmed() {
    let scene = Scene::of(confirmed).workers(0).start().await;
    let queue = <confirmed as Job>::QUEUE;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200u32 {
        let client = scene.client.clone();
        tasks.spawn(async move { client.enqueue(confirmed, n).await });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        ids.insert(joined.unwrap().expect("every enqueue is confirmed"));
    }
    assert_eq!(ids.len(), 200, "every message has its own id");
    // Confirmed means stored: all 200 are on the queue right now.
    assert_eq!(scene.ready().await, 200);

    // A queue deleted under the client: the publish is returned, and that is an error.
    scene.broker.reset(queue).await;
    let error = scene
        .client
        .enqueue(confirmed, 1)
        .await
        .expect_err("an unroutable publish is not a success");
    assert!(
        matches!(error, Error::Unroutable { ref routing_key, .. } if routing_key == queue),
        "{error}"
    );
    assert!(error.to_string().contains("reached no queue"), "{error}");
    // The client declares the queue again on the next enqueue.
    scene
        .client
        .enqueue(confirmed, 2)
        .await
        .expect("the queue is declared again");
    assert_eq!(scene.ready().await, 1);

    // A closed connection is an error too, never a silent success.
    let closed = Client::connect(&amqp_url()).await.unwrap();
    closed.close().await.unwrap();
    let error = closed
        .enqueue(confirmed, 3)
        .await
        .expect_err("a closed client does not publish");
    assert!(matches!(error, Error::ClientClosed), "{error}");
    assert_eq!(scene.ready().await, 1, "nothing more was published");
    scene.finish().await;
}

/// Connects a client to `url`, which must fail after `attempts` attempt(s)
/// with an error whose text (with its causes) says `says` and does not show
/// `password`.
async fn assert_connect_fails(url: &str, attempts: usize, says: &str, password: &str) {
    let error = Client::connect(url)
        .await
        .expect_err("the connection must fail");
    let text = eda_worker::error_chain_text(&error);
    assert!(
        matches!(error, Error::Connect { attempts: made, .. } if made == attempts),
        "{attempts} attempt(s) expected: {text}"
    );
    assert!(text.contains(says), "{text}");
    assert!(!text.contains(password), "the password leaked: {text}");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_without_the_password() {
    // Nothing listens on port 1: the client retries, then gives up.
    assert_connect_fails(
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
        5,
        "amqp://guest:***@127.0.0.1:1/%2f",
        "hunter2",
    )
    .await;
}

#[tokio::test]
async fn refused_credentials_fail_at_once_without_the_password() {
    // No retry of a refused login.
    assert_connect_fails(
        "amqp://guest:wrong-hunter2@127.0.0.1:5672/%2f",
        1,
        "ACCESS_REFUSED",
        "wrong-hunter2",
    )
    .await;
}

#[tokio::test]
async fn amqps_to_a_plain_port_fails_naming_tls_rather_than_sending_in_clear_text() {
    // The plain port answers the TLS hello with AMQP: without TLS compiled
    // in, this would connect unencrypted and send the password.
    let url = amqp_url().replacen("amqp://", "amqps://", 1);
    let error = Client::connect(&url)
        .await
        .expect_err("a plain port is no TLS listener");
    let text = eda_worker::error_chain_text(&error);
    assert!(matches!(error, Error::Tls { .. }), "{text}");
    assert!(text.contains("TLS handshake"), "{text}");
    if let Some((_, password)) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
    {
        assert!(!text.contains(&format!(":{password}@")), "{text}");
    }
}

#[tokio::test]
async fn a_publish_the_broker_nacks_is_an_error() {
    let scene = Scene::of(refused).workers(0).start().await;
    let queue = <refused as Job>::QUEUE;
    scene
        .broker
        .declare_durable(queue, Default::default())
        .await;
    // A policy (not queue arguments, so the client's plain declaration still
    // matches) makes the broker nack publishes once the queue holds one message.
    let policy = Policy::on_queues(
        "eda-test-nack",
        &format!("^{}$", queue.replace('.', r"\.")),
        r#"{"max-length":1,"overflow":"reject-publish"}"#,
    );
    wait_until("the policy applies to the queue", WAIT, || async {
        policy.applies_to(queue)
    })
    .await;

    let first = scene.client.enqueue(refused, 1).await;
    let second = scene.client.enqueue(refused, 2).await;
    drop(policy);
    first.expect("the first publish fits and is confirmed");
    let error = second.expect_err("the broker nacks a publish into the full queue");
    assert!(
        matches!(error, Error::Nacked { ref routing_key, .. } if routing_key == queue),
        "{error}"
    );
    assert!(error.to_string().contains("it was not stored"), "{error}");
    assert_eq!(
        scene.ready().await,
        1,
        "the queue holds exactly what was confirmed"
    );
    scene.finish().await;
}

#[tokio::test]
async fn concurrent_verdicts_match_what_the_broker_stored() {
    let scene = Scene::of(to_deleted_queue)
        .also(to_kept_queue)
        .workers(0)
        .start()
        .await;
    let (deleted, kept) = (
        <to_deleted_queue as Job>::QUEUE,
        <to_kept_queue as Job>::QUEUE,
    );
    let client = &scene.client;
    scene.enqueue(to_deleted_queue, 0).await;
    scene.enqueue(to_kept_queue, 0).await;
    // Deleted under the client, which still believes it declared it.
    scene.broker.reset(deleted).await;
    scene.broker.drain(kept).await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100u32 {
        let client = client.clone();
        tasks.spawn(async move {
            if n % 2 == 0 {
                (true, client.enqueue(to_kept_queue, n).await)
            } else {
                (false, client.enqueue(to_deleted_queue, n).await)
            }
        });
    }
    let (mut kept_ok, mut deleted_ok, mut unroutable) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (true, outcome) => {
                outcome.expect("every publish to the kept queue is confirmed");
                kept_ok += 1;
            }
            // After the first return the client declares the queue again, so later
            // publishes to it may well be stored: what matters is that each verdict is true.
            (false, Ok(_)) => deleted_ok += 1,
            (false, Err(Error::Unroutable { routing_key, .. })) => {
                assert_eq!(routing_key, deleted);
                unroutable += 1;
            }
            (false, Err(other)) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(kept_ok, 50);
    assert!(
        unroutable > 0,
        "publishes to the deleted queue were returned"
    );
    assert_eq!(
        scene.broker.ready(kept).await,
        kept_ok,
        "a confirmed message is stored"
    );
    assert_eq!(
        scene.broker.ready(deleted).await,
        deleted_ok,
        "exactly the confirmed ones were stored"
    );
    scene.finish().await;
}

#[tokio::test]
async fn the_client_reconnects_when_the_broker_drops_its_connection() {
    let name = unique_connection_name("eda-test-client");
    let scene = Scene::of(after_reconnect)
        .workers(0)
        .client_options(ClientOptions::default().connection_name(&name))
        .start()
        .await;
    scene.enqueue(after_reconnect, 1).await;

    let pid = connection_pid(&name).expect("the client's connection is listed");
    close_connection(&pid);
    wait_until("the broker dropped the connection", WAIT, || async {
        connection_pid(&name).is_none()
    })
    .await;
    scene
        .client
        .enqueue(after_reconnect, 2)
        .await
        .expect("the next enqueue reconnects");
    assert!(
        connection_pid(&name).is_some_and(|new_pid| new_pid != pid),
        "a new connection"
    );
    assert_eq!(scene.ready().await, 2);
    scene.finish().await;
}

#[tokio::test]
async fn enqueues_during_an_outage_each_give_up_at_their_own_deadline() {
    let scene = Scene::of(during_outage).workers(0).start().await;
    let queue = <during_outage as Job>::QUEUE;
    let proxy = Proxy::start().await;
    let deadline = Duration::from_secs(2);
    let options = ClientOptions::default().publish_timeout(deadline);
    let client = Client::connect_with_options(&proxy.url(), options)
        .await
        .unwrap();
    let before = client.enqueue(during_outage, 0).await.unwrap();

    // The network black-holes the client: its connection is gone, and a new
    // one is accepted but never answered (an attempt would wait 10 s, and
    // five attempts most of a minute).
    proxy.black_hole();
    // The client learns of the drop on its next publish, which fails.
    client
        .enqueue(during_outage, 1)
        .await
        .expect_err("the connection is gone");
    let accepted = proxy.accepted();
    let callers = (2..=65).map(|n| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let result = client.enqueue(during_outage, n).await;
            (result, started.elapsed())
        }
    });
    for (result, took) in futures_util::future::join_all(callers).await {
        // Each waits for the one reconnect they share, until its own deadline.
        assert!(
            matches!(result, Err(Error::PublishTimeout { .. })),
            "{result:?}"
        );
        assert!(
            took < deadline + Duration::from_secs(3),
            "an enqueue waited {took:?}, past its {deadline:?} deadline"
        );
    }

    assert!(
        proxy.accepted() - accepted <= 1,
        "the callers shared one reconnect attempt, not {}",
        proxy.accepted() - accepted
    );

    // Back: the next enqueue goes through (retried with the same message id,
    // as the timeout's error advises).
    proxy.restore();
    let after = MessageId::new();
    let retry = EnqueueOptions::default().message_id(after);
    wait_until("an enqueue goes through again", WAIT, || async {
        client
            .enqueue_with(during_outage, 100, retry.clone())
            .await
            .is_ok()
    })
    .await;
    let mut arrived: Vec<String> = scene
        .broker
        .drain(queue)
        .await
        .iter()
        .map(message_id)
        .collect();
    arrived.dedup();
    assert_eq!(arrived, [before.to_string(), after.to_string()]);
    scene.finish().await;
}

#[tokio::test]
async fn arguments_over_the_size_limit_are_refused_before_publishing() {
    let scene = Scene::of(oversized)
        .workers(0)
        .client_options(ClientOptions::default().max_message_size(64))
        .start()
        .await;
    let client = &scene.client;
    client.enqueue(oversized, "x".repeat(62)).await.unwrap();
    let error = client.enqueue(oversized, "x".repeat(63)).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::MessageTooLarge {
                payload: eda_worker::wire::Payload::Job("oversized"),
                size: 65,
                limit: 64
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("would be 65 bytes as JSON, more than the maximum message size of 64 bytes")
    );
    assert_eq!(scene.ready().await, 1, "only the first was published");
    scene.finish().await;
}
