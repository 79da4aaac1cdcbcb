//! Enqueue: confirmed publishes with the wire format of DESIGN.md, typed
//! arguments that arrive intact, and loud failures.

use eda_worker::wire::{self, HEADER_ATTEMPT};
use eda_worker::{Client, EnqueueOptions, Error};
use eda_worker_tests::jobs::{
    CONFIRMS_QUEUE, OVERSIZE_QUEUE, ROUNDTRIP_QUEUE, Signup, confirmed, oversized, roundtrip, runs,
};
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, rabbitmqctl, wait_until, worker_config,
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
    let broker = Broker::connect().await;
    broker.reset(ROUNDTRIP_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();

    // On the wire, before any worker runs.
    let id = client
        .enqueue_with(
            roundtrip,
            signup(),
            EnqueueOptions::default().correlation_id("req-7"),
        )
        .await
        .unwrap();
    let message = broker
        .get(ROUNDTRIP_QUEUE)
        .await
        .expect("the enqueued message is on the queue");
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().unwrap().as_str(),
        id.to_string()
    );
    assert_eq!(
        properties.correlation_id().as_ref().unwrap().as_str(),
        "req-7"
    );
    assert_eq!(properties.kind().as_ref().unwrap().as_str(), "roundtrip");
    assert_eq!(
        properties.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let sent_at = properties.timestamp().expect("timestamp is set");
    assert!(
        sent_at.abs_diff(eda_worker_tests::now_millis() / 1000) < 60,
        "timestamp is now, in seconds"
    );
    assert_eq!(wire::header_u64(properties, HEADER_ATTEMPT), Some(0));
    let body: Signup = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body, signup());

    // Through a worker, into the typed handler.
    let id = client.enqueue(roundtrip, signup()).await.unwrap();
    let worker = RunningWorker::start(&broker, ROUNDTRIP_QUEUE, worker_config()).await;
    wait_until("the job ran", WAIT, || async {
        !runs(ROUNDTRIP_QUEUE).is_empty()
    })
    .await;
    worker.stop().await.unwrap();
    let ran = runs(ROUNDTRIP_QUEUE);
    assert_eq!(ran.len(), 1, "the job ran once: {ran:?}");
    assert_eq!(ran[0].message_id, id.to_string());
    assert_eq!(
        ran[0].correlation_id.as_deref(),
        Some(id.to_string().as_str()),
        "a fresh correlation id is the message id"
    );
    assert_eq!(ran[0].attempt, 0);
    assert_eq!(ran[0].args, serde_json::to_value(signup()).unwrap());
    assert_eq!(broker.ready(ROUNDTRIP_QUEUE).await, 0);
    assert_eq!(broker.ready(&format!("{ROUNDTRIP_QUEUE}.dlq")).await, 0);

    client.close().await.unwrap();
    broker.cleanup(ROUNDTRIP_QUEUE).await;
}

#[tokio::test]
async fn concurrent_enqueues_share_one_client_and_all_are_confirmed() {
    let broker = Broker::connect().await;
    broker.reset(CONFIRMS_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200u32 {
        let client = client.clone();
        tasks.spawn(async move { client.enqueue(confirmed, n).await });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        ids.insert(joined.unwrap().expect("every enqueue is confirmed"));
    }
    assert_eq!(ids.len(), 200, "every message has its own id");
    // Confirmed means stored: all 200 are on the queue right now.
    assert_eq!(broker.ready(CONFIRMS_QUEUE).await, 200);

    // A queue deleted under the client: the publish is returned, and that is an error.
    broker.reset(CONFIRMS_QUEUE).await;
    let error = client
        .enqueue(confirmed, 1)
        .await
        .expect_err("an unroutable publish is not a success");
    assert!(
        matches!(error, Error::Unroutable { ref routing_key, .. } if routing_key == CONFIRMS_QUEUE),
        "{error}"
    );
    assert!(error.to_string().contains("reached no queue"), "{error}");
    // The client declares the queue again on the next enqueue.
    client
        .enqueue(confirmed, 2)
        .await
        .expect("the queue is declared again");
    assert_eq!(broker.ready(CONFIRMS_QUEUE).await, 1);

    // A closed connection is an error too, never a silent success.
    let closed = Client::connect(&amqp_url()).await.unwrap();
    closed.close().await.unwrap();
    let error = closed
        .enqueue(confirmed, 3)
        .await
        .expect_err("a closed client does not publish");
    assert!(matches!(error, Error::ClientClosed), "{error}");
    assert_eq!(
        broker.ready(CONFIRMS_QUEUE).await,
        1,
        "nothing more was published"
    );

    client.close().await.unwrap();
    broker.cleanup(CONFIRMS_QUEUE).await;
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_without_the_password() {
    let error = Client::connect("amqp://guest:hunter2@127.0.0.1:1/%2f")
        .await
        .expect_err("nothing listens on port 1");
    let text = eda_worker::error_chain_text(&error);
    assert!(
        matches!(error, Error::Connect { attempts: 5, .. }),
        "{text}"
    );
    assert!(text.contains("amqp://guest:***@127.0.0.1:1/%2f"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test]
async fn refused_credentials_fail_at_once_without_the_password() {
    let error = Client::connect("amqp://guest:wrong-hunter2@127.0.0.1:5672/%2f")
        .await
        .expect_err("the broker refuses the login");
    let text = eda_worker::error_chain_text(&error);
    assert!(
        matches!(error, Error::Connect { attempts: 1, .. }),
        "no retry of a refused login: {text}"
    );
    assert!(text.contains("ACCESS_REFUSED"), "{text}");
    assert!(
        !text.contains("wrong-hunter2"),
        "the password leaked: {text}"
    );
}

#[tokio::test]
async fn a_publish_the_broker_nacks_is_an_error() {
    use eda_worker_tests::jobs::{NACK_QUEUE, refused};
    let broker = Broker::connect().await;
    broker.reset(NACK_QUEUE).await;
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    broker
        .channel()
        .await
        .queue_declare(NACK_QUEUE.into(), durable, Default::default())
        .await
        .unwrap();
    // A policy (not queue arguments, so the client's plain declaration still
    // matches) makes the broker nack publishes once the queue holds one message.
    let policy = format!("eda-test-nack-{}", uuid::Uuid::new_v4());
    let definition = r#"{"max-length":1,"overflow":"reject-publish"}"#;
    rabbitmqctl(&[
        "set_policy",
        &policy,
        r"^eda-test\.nack$",
        definition,
        "--apply-to",
        "queues",
    ]);
    wait_until("the policy applies to the queue", WAIT, || async {
        rabbitmqctl(&["list_queues", "-q", "name", "policy"])
            .lines()
            .any(|line| line.starts_with(NACK_QUEUE) && line.contains(&policy))
    })
    .await;
    let client = Client::connect(&amqp_url()).await.unwrap();

    let first = client.enqueue(refused, 1).await;
    let second = client.enqueue(refused, 2).await;
    rabbitmqctl(&["clear_policy", &policy]);
    first.expect("the first publish fits and is confirmed");
    let error = second.expect_err("the broker nacks a publish into the full queue");
    assert!(
        matches!(error, Error::Nacked { ref routing_key, .. } if routing_key == NACK_QUEUE),
        "{error}"
    );
    assert!(error.to_string().contains("it was not stored"), "{error}");
    assert_eq!(
        broker.ready(NACK_QUEUE).await,
        1,
        "the queue holds exactly what was confirmed"
    );

    client.close().await.unwrap();
    broker.cleanup(NACK_QUEUE).await;
}

#[tokio::test]
async fn concurrent_verdicts_match_what_the_broker_stored() {
    use eda_worker_tests::jobs::{
        ROUTABLE_QUEUE, UNROUTABLE_QUEUE, to_deleted_queue, to_kept_queue,
    };
    let broker = Broker::connect().await;
    broker.reset(UNROUTABLE_QUEUE).await;
    broker.reset(ROUTABLE_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    client.enqueue(to_deleted_queue, 0).await.unwrap();
    client.enqueue(to_kept_queue, 0).await.unwrap();
    // Deleted under the client, which still believes it declared it.
    broker.reset(UNROUTABLE_QUEUE).await;
    broker.purge(ROUTABLE_QUEUE).await;

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
                assert_eq!(routing_key, UNROUTABLE_QUEUE);
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
        broker.ready(ROUTABLE_QUEUE).await,
        kept_ok,
        "a confirmed message is stored"
    );
    assert_eq!(
        broker.ready(UNROUTABLE_QUEUE).await,
        deleted_ok,
        "exactly the confirmed ones were stored"
    );

    client.close().await.unwrap();
    broker.reset(UNROUTABLE_QUEUE).await;
    broker.cleanup(ROUTABLE_QUEUE).await;
}

#[tokio::test]
async fn the_client_reconnects_when_the_broker_drops_its_connection() {
    use eda_worker_tests::jobs::{CLIENT_RECONNECT_QUEUE, after_reconnect};
    use eda_worker_tests::{close_connection, connection_pid};
    let broker = Broker::connect().await;
    broker.reset(CLIENT_RECONNECT_QUEUE).await;
    let name = format!("eda-test-client-{}", uuid::Uuid::new_v4());
    let client = Client::connect_named(&amqp_url(), &name).await.unwrap();
    client.enqueue(after_reconnect, 1).await.unwrap();

    let pid = connection_pid(&name).expect("the client's connection is listed");
    close_connection(&pid);
    wait_until("the broker dropped the connection", WAIT, || async {
        connection_pid(&name).is_none()
    })
    .await;
    client
        .enqueue(after_reconnect, 2)
        .await
        .expect("the next enqueue reconnects");
    assert!(
        connection_pid(&name).is_some_and(|new_pid| new_pid != pid),
        "a new connection"
    );
    assert_eq!(broker.ready(CLIENT_RECONNECT_QUEUE).await, 2);

    client.close().await.unwrap();
    broker.cleanup(CLIENT_RECONNECT_QUEUE).await;
}

#[tokio::test]
async fn arguments_over_the_size_limit_are_refused_before_publishing() {
    let broker = Broker::connect().await;
    broker.reset(OVERSIZE_QUEUE).await;
    let options = eda_worker::ClientOptions::default().max_message_size(64);
    let client = Client::connect_with_options(&amqp_url(), options)
        .await
        .unwrap();
    client.enqueue(oversized, "x".repeat(62)).await.unwrap();
    let error = client.enqueue(oversized, "x".repeat(63)).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::MessageTooLarge {
                job: "oversized",
                size: 65,
                limit: 64
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("are 65 bytes as JSON, more than the maximum message size of 64 bytes")
    );
    assert_eq!(
        broker.ready(OVERSIZE_QUEUE).await,
        1,
        "only the first was published"
    );
    client.close().await.unwrap();
    broker.cleanup(OVERSIZE_QUEUE).await;
}
