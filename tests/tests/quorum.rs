//! The failure path on a quorum job queue: the same layout works unchanged.
//! Retries, spent retries, a poison message, a scheduled job and a DLQ replay,
//! with the job queue and its DLQ declared as quorum queues.

use std::time::Duration;

use eda_worker::dead_letter::{DeadLetters, Replay};
use eda_worker::wire::{HEADER_ATTEMPT, HEADER_ERROR, header_text, header_u64};
use eda_worker::{Client, DelayQueues};
use eda_worker_tests::jobs::{QUORUM_QUEUE, Run, quorum_echo, quorum_flaky, runs};
use eda_worker_tests::now_millis;
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, rabbitmqctl, wait_until, worker_config,
};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;

fn runs_of(id: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = runs(QUORUM_QUEUE)
        .into_iter()
        .filter(|run| run.message_id == id)
        .collect();
    runs.sort_by_key(|run| run.at_ms);
    runs
}

fn queue_type(queue: &str) -> Option<String> {
    rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "type"])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .map(|(_, kind)| kind.trim().to_owned())
}

#[tokio::test]
async fn retries_dead_letters_schedules_and_replays_work_on_a_quorum_queue() {
    let broker = Broker::connect().await;
    broker.reset(QUORUM_QUEUE).await;
    let dlq = format!("{QUORUM_QUEUE}.dlq");
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, QUORUM_QUEUE, worker_config()).await;
    assert_eq!(queue_type(QUORUM_QUEUE).as_deref(), Some("quorum"));
    assert_eq!(
        queue_type(&dlq).as_deref(),
        Some("classic"),
        "a DLQ must not count the deliveries of `dlq list`"
    );
    let one_second = DelayQueues::default().name(QUORUM_QUEUE, Duration::from_secs(1));
    assert_eq!(queue_type(&one_second).as_deref(), Some("quorum"));

    let recovers = client.enqueue(quorum_flaky, 1).await.unwrap().to_string();
    let spent = client.enqueue(quorum_flaky, 9).await.unwrap().to_string();
    let due = now_millis() + 600;
    let scheduled = client
        .enqueue_in(quorum_echo, 5, Duration::from_millis(600))
        .await
        .unwrap()
        .to_string();
    broker
        .channel()
        .await
        .basic_publish(
            "".into(),
            QUORUM_QUEUE.into(),
            BasicPublishOptions::default(),
            b"{not json",
            BasicProperties::default()
                .with_message_id("quorum-poison".into())
                .with_type("quorum_echo".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let good = client.enqueue(quorum_echo, 3).await.unwrap().to_string();

    wait_until("two dead letters", WAIT, || async {
        broker.ready(&dlq).await == 2
    })
    .await;
    wait_until("the scheduled job ran", WAIT, || async {
        !runs_of(&scheduled).is_empty()
    })
    .await;
    let attempts = |id: &str| -> Vec<u32> { runs_of(id).iter().map(|run| run.attempt).collect() };
    assert_eq!(attempts(&recovers), [0, 1]);
    assert_eq!(attempts(&spent), [0, 1, 2]);
    assert_eq!(attempts(&good), [0]);
    assert!(runs_of(&scheduled)[0].at_ms >= due, "not before it was due");

    // The DLQ tooling reads and replays the quorum DLQ.
    let dead_letters = DeadLetters::connect(&amqp_url()).await.unwrap();
    let listed = dead_letters.list(QUORUM_QUEUE, 10).await.unwrap();
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
        .replay(QUORUM_QUEUE, Replay::Id(spent.clone()))
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    wait_until(
        "the replayed job ran again from attempt 0",
        WAIT,
        || async { attempts(&spent) == [0, 1, 2, 0, 1, 2] },
    )
    .await;
    wait_until("it is a dead letter again", WAIT, || async {
        broker.ready(&dlq).await == 2
    })
    .await;
    dead_letters.close().await.unwrap();
    worker.stop().await.unwrap();

    let dead = broker.drain(&dlq).await;
    let poison = dead
        .iter()
        .find(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                == Some("quorum-poison")
        })
        .expect("the poison message is dead-lettered");
    assert_eq!(poison.delivery.data, b"{not json");
    assert!(
        header_text(&poison.delivery.properties, HEADER_ERROR)
            .unwrap_or_default()
            .contains("body is not valid JSON arguments for job `quorum_echo`")
    );
    assert_eq!(
        header_u64(&poison.delivery.properties, HEADER_ATTEMPT),
        Some(0)
    );
    assert_eq!(broker.ready(QUORUM_QUEUE).await, 0);
    client.close().await.unwrap();
    broker.cleanup(QUORUM_QUEUE).await;
}
