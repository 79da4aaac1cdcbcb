//! The failure path on a quorum job queue: the same layout works unchanged.
//! Retries, spent retries, a poison message, a scheduled job and a DLQ replay,
//! with the job queue and its DLQ declared as quorum queues.

use std::time::Duration;

use eda_worker::wire::{HEADER_ATTEMPT, header_u64};
use eda_worker::{DelayQueues, Job};
use eda_worker_tests::broker::{error_header, find_message, foreign_properties};
use eda_worker_tests::jobs::quorum_queues::{quorum_echo, quorum_flaky, quorum_legacy_dlq};
use eda_worker_tests::jobs::runs_of;
use eda_worker_tests::{
    DeadLetters, Replay, Scene, WAIT, amqp_url, now_millis, rabbitmqctl, wait_until,
};

fn queue_type(queue: &str) -> Option<String> {
    rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "type"])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, kind)| kind.trim().to_owned())
}

fn queue_arguments(queue: &str) -> String {
    rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "arguments",
    ])
    .lines()
    .filter_map(|line| line.split_once('\t'))
    .find(|(name, _)| *name == queue)
    .map(|(_, arguments)| arguments.trim().to_owned())
    .unwrap_or_default()
}

#[tokio::test]
async fn retries_dead_letters_schedules_and_replays_work_on_a_quorum_queue() {
    // `quorum_echo` shares the queue of `quorum_flaky`.
    let mut scene = Scene::of(quorum_flaky).start().await;
    let queue = <quorum_flaky as Job>::QUEUE;
    assert_eq!(queue_type(queue).as_deref(), Some("quorum"));
    // The DLQ survives the loss of a node like its job queue, and its
    // delivery limit is lifted so that `dlq list` never wears it out.
    assert_eq!(
        queue_type(&scene.dead_letter_queue()).as_deref(),
        Some("quorum")
    );
    assert!(
        queue_arguments(&scene.dead_letter_queue()).contains("{\"x-delivery-limit\",2147483647}"),
        "{}",
        queue_arguments(&scene.dead_letter_queue())
    );
    let one_second = DelayQueues::default().name(queue, Duration::from_secs(1));
    assert_eq!(queue_type(&one_second).as_deref(), Some("quorum"));

    let recovers = scene.enqueue(quorum_flaky, 1).await;
    let spent = scene.enqueue(quorum_flaky, 9).await;
    let due = now_millis() + 600;
    let scheduled = scene
        .client
        .enqueue_in(quorum_echo, 5, Duration::from_millis(600))
        .await
        .unwrap()
        .to_string();
    let poison = foreign_properties("quorum-poison", Some("quorum_echo"));
    scene
        .broker
        .publish_raw("", queue, b"{not json", poison)
        .await;
    let good = scene.enqueue(quorum_echo, 3).await;

    scene.wait_for_dead_letters(2).await;
    wait_until("the scheduled job ran", WAIT, || async {
        !runs_of(queue, &scheduled).is_empty()
    })
    .await;
    let attempts =
        |id: &str| -> Vec<u32> { runs_of(queue, id).iter().map(|run| run.attempt).collect() };
    assert_eq!(attempts(&recovers), [0, 1]);
    assert_eq!(attempts(&spent), [0, 1, 2]);
    assert_eq!(attempts(&good), [0]);
    assert!(
        runs_of(queue, &scheduled)[0].at_ms >= due,
        "not before it was due"
    );

    // The DLQ tooling reads and replays the quorum DLQ.
    let dead_letters = DeadLetters::connect(&amqp_url()).await.unwrap();
    // Each list hands the messages back: more than RabbitMQ 4's default
    // delivery limit of 20 lists lose none. (A quorum queue takes a message
    // handed back a moment later, so a list right after may see fewer.)
    for round in 0..25 {
        wait_until(
            &format!("list {round} shows both dead letters"),
            WAIT,
            || async { dead_letters.list(queue, 10).await.unwrap().len() == 2 },
        )
        .await;
    }
    let listed = dead_letters.list(queue, 10).await.unwrap();
    let mut listed_ids: Vec<&str> = listed.iter().map(|dead| dead.message_id.as_str()).collect();
    listed_ids.sort_unstable();
    let mut expected = vec![spent.as_str(), "quorum-poison"];
    expected.sort_unstable();
    assert_eq!(listed_ids, expected);
    let spent_letter = listed.iter().find(|dead| dead.message_id == spent).unwrap();
    assert_eq!(spent_letter.attempt, 2);
    assert_eq!(
        spent_letter.error.as_deref(),
        Some("attempt 2 failed on purpose")
    );
    let replayed = dead_letters
        .replay(queue, Replay::Id(spent.clone()))
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    wait_until(
        "the replayed job ran again from attempt 0",
        WAIT,
        || async { attempts(&spent) == [0, 1, 2, 0, 1, 2] },
    )
    .await;
    scene.wait_for_dead_letters(2).await;
    dead_letters.close().await.unwrap();
    scene.stop_workers().await;

    let dead = scene.take_dead_letters().await;
    let poison = find_message(&dead, "quorum-poison");
    assert_eq!(poison.delivery.data, b"{not json");
    assert!(
        error_header(poison).contains("body is not valid JSON arguments for job `quorum_echo`")
    );
    assert_eq!(
        header_u64(&poison.delivery.properties, HEADER_ATTEMPT),
        Some(0)
    );
    assert_eq!(scene.ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_classic_dlq_an_older_version_declared_is_used_as_it_is() {
    let mut scene = Scene::of(quorum_legacy_dlq).workers(0).start().await;
    let dead_letter_queue = scene.dead_letter_queue();
    scene
        .broker
        .declare_durable(&dead_letter_queue, lapin::types::FieldTable::default())
        .await;
    scene.start_worker().await;
    let id = scene.enqueue(quorum_legacy_dlq, 9).await;
    scene.wait_for_dead_letters(1).await;
    assert_eq!(queue_type(&dead_letter_queue).as_deref(), Some("classic"));
    let dead = scene.take_dead_letters().await;
    assert_eq!(eda_worker_tests::broker::message_id(&dead[0]), id);
    assert!(scene.workers_running());
    scene.finish().await;
}
