//! A settlement failure stays with its message: a job whose dead letter the
//! broker refuses is held, unacked, without running again, and neither the
//! session nor another queue of the same worker pays for it. Once the
//! dead-letter queue takes messages again, the dead letter goes out.

use std::time::Duration;

use eda_worker::{Job, Worker};
use eda_worker_tests::broker::{Policy, unique_connection_name};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::jobs::settlement::{steady, stuck, stuck_briefly};
use eda_worker_tests::{Scene, WAIT, connection_pid, wait_until, worker_config};
use tokio_util::sync::CancellationToken;

const STEADY_JOBS: u32 = 200;

#[tokio::test]
async fn a_dead_letter_the_broker_refuses_holds_its_message_and_nothing_else() {
    let scene = Scene::of(stuck).also(steady).workers(0).start().await;
    let (queue, other) = (<stuck as Job>::QUEUE, <steady as Job>::QUEUE);
    let dead_letters = scene.dead_letter_queue();
    let name = unique_connection_name("eda-test-settlement");
    let token = CancellationToken::new();
    let worker = Worker::new(
        worker_config()
            .queues([queue, other])
            .connection_name(name.as_str()),
    )
    .expect("config");
    let running = tokio::spawn(worker.run(token.clone()));
    wait_until("the worker consumes both queues", WAIT, || async {
        scene.broker.consumers(queue).await == 1 && scene.broker.consumers(other).await == 1
    })
    .await;
    let pid = connection_pid(&name).expect("the worker's connection");

    // The dead-letter queue refuses every message.
    let refusing = Policy::on_queues(
        "eda-test-refuse",
        &format!("^{}$", dead_letters.replace('.', r"\.")),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    );
    wait_until("the policy applies to the DLQ", WAIT, || async {
        refusing.applies_to(&dead_letters)
    })
    .await;
    let stuck_id = scene.enqueue(stuck, 1).await;
    wait_until("the stuck job ran", WAIT, || async {
        !runs(queue).is_empty()
    })
    .await;

    // The other queue goes on, on the same session.
    for n in 0..STEADY_JOBS {
        scene.enqueue(steady, n).await;
    }
    wait_until("every steady job ran", WAIT, || async {
        runs(other).len() >= usize::try_from(STEADY_JOBS).expect("small")
    })
    .await;
    assert_eq!(runs(queue).len(), 1, "the held job did not run again");
    assert_eq!(
        scene.ready().await,
        0,
        "the held job is not back in its queue"
    );
    assert_eq!(scene.dead_letters_ready().await, 0);
    assert_eq!(
        connection_pid(&name).as_deref(),
        Some(pid.as_str()),
        "the worker kept its session"
    );

    // The dead-letter queue takes messages again: the held dead letter goes out.
    drop(refusing);
    scene.wait_for_dead_letters(1).await;
    let letters = scene.take_dead_letters().await;
    assert_eq!(eda_worker_tests::broker::message_id(&letters[0]), stuck_id);
    assert_eq!(runs(queue).len(), 1, "it ran once in all");
    token.cancel();
    running
        .await
        .expect("worker task")
        .expect("the worker stops without error");
    scene.finish().await;
}

#[tokio::test]
async fn past_its_bound_a_held_message_is_handed_back_and_that_is_no_failed_attempt() {
    // A consumer_timeout of 4 s: a message is held for at most 2 s.
    let mut scene = Scene::of(stuck_briefly)
        .worker_config(|config| config.consumer_timeout(Duration::from_secs(4)))
        .start()
        .await;
    let queue = scene.queue().to_owned();
    let dead_letters = scene.dead_letter_queue();
    let refusing = Policy::on_queues(
        "eda-test-refuse",
        &format!("^{}$", dead_letters.replace('.', r"\.")),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    );
    wait_until("the policy applies to the DLQ", WAIT, || async {
        refusing.applies_to(&dead_letters)
    })
    .await;
    let id = scene.enqueue(stuck_briefly, 1).await;
    wait_until(
        "the message was handed back and ran again",
        WAIT,
        || async { runs(&queue).len() >= 2 },
    )
    .await;
    let held_for = runs(&queue)[1].at_ms - runs(&queue)[0].at_ms;
    // Tried again at least once (after 200 ms), handed back before the bound.
    assert!(
        (200..3_000).contains(&held_for),
        "held for {held_for} ms before the hand-back"
    );
    assert!(
        runs(&queue)
            .iter()
            .all(|run| run.attempt == 0 && run.message_id == id),
        "a hand-back is not a failed attempt: {:?}",
        runs(&queue)
    );
    drop(refusing);
    scene.stop_once_dead_lettered(1).await;
    scene.finish().await;
}
