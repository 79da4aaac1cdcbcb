//! Dead-letter tooling against the real broker: `list` leaves the DLQ as it
//! was, `replay` runs jobs again as first attempts and removes only what it
//! replayed, `purge` empties it; and the `worker dlq` command does the same.

use std::process::Stdio;

use eda_worker::dead_letter::{DeadLetters, Replay, queue_name as dead_letter_queue};
use eda_worker::{Client, Error, Job};
use eda_worker_tests::jobs::{
    DLQ_TOOL_CLI_LIST_QUEUE, DLQ_TOOL_CLI_PURGE_QUEUE, DLQ_TOOL_FAILS, DLQ_TOOL_LIMIT_QUEUE,
    DLQ_TOOL_LIST_QUEUE, DLQ_TOOL_PURGE_QUEUE, DLQ_TOOL_REPLAY_ALL_QUEUE, DLQ_TOOL_REPLAY_ID_QUEUE,
    DLQ_TOOL_UNKNOWN_ID_QUEUE, Numbered, dlq_tool_cli_list, dlq_tool_cli_purge, dlq_tool_limit,
    dlq_tool_list, dlq_tool_purge, dlq_tool_replay_all, dlq_tool_replay_id, dlq_tool_unknown_id,
    runs,
};
use eda_worker_tests::{Broker, RunningWorker, WAIT, amqp_url, wait_until, worker_config};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

/// A job queue with real dead letters, made by a worker that still runs.
struct Dead {
    broker: Broker,
    client: Client,
    worker: RunningWorker,
    /// The dead letters' message ids, oldest first.
    ids: Vec<String>,
}

impl Dead {
    /// Runs `job` `count` times while it fails, one at a time (so the DLQ
    /// holds them in enqueue order), and waits until all are dead letters.
    async fn letters<J: Job<Args = Numbered>>(job: J, count: u32) -> Self {
        let broker = Broker::connect().await;
        broker.reset(J::QUEUE).await;
        DLQ_TOOL_FAILS.set(J::QUEUE, true);
        let client = Client::connect(&amqp_url()).await.unwrap();
        let config = worker_config().concurrency(1).prefetch(1);
        let worker = RunningWorker::start(&broker, J::QUEUE, config).await;
        let mut ids = Vec::new();
        for n in 0..count {
            let id = client.enqueue(job, Numbered { n }).await.unwrap();
            ids.push(id.to_string());
        }
        let dlq = dead_letter_queue(J::QUEUE);
        wait_until("every job is a dead letter", WAIT, || async {
            broker.ready(&dlq).await == count
        })
        .await;
        Dead {
            broker,
            client,
            worker,
            ids,
        }
    }

    /// Waits until the DLQ holds `count` ready messages (borrowed ones are
    /// given back asynchronously), takes them all off and returns their ids,
    /// in queue order.
    async fn drain_ids(&self, queue: &str, count: usize) -> Vec<String> {
        let dlq = dead_letter_queue(queue);
        wait_until("the DLQ holds the expected dead letters", WAIT, || async {
            usize::try_from(self.broker.ready(&dlq).await).unwrap() == count
        })
        .await;
        self.broker
            .drain(&dlq)
            .await
            .iter()
            .map(|message| message_id(&message.delivery.properties))
            .collect()
    }

    async fn finish(self, queue: &str) {
        self.worker.stop().await.unwrap();
        self.client.close().await.unwrap();
        self.broker.cleanup(queue).await;
    }
}

fn message_id(properties: &lapin::BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

async fn tool() -> DeadLetters {
    DeadLetters::connect(&amqp_url()).await.unwrap()
}

#[tokio::test]
async fn list_shows_the_dead_letters_and_leaves_them_in_place_and_in_order() {
    let queue = DLQ_TOOL_LIST_QUEUE;
    let dead = Dead::letters(dlq_tool_list, 5).await;
    let tool = tool().await;

    let letters = tool.list(queue, 100).await.unwrap();

    let ids: Vec<&str> = letters.iter().map(|l| l.message_id.as_str()).collect();
    assert_eq!(ids, dead.ids, "oldest first, in enqueue order");
    for (n, letter) in letters.iter().enumerate() {
        assert_eq!(letter.job.as_deref(), Some("dlq_tool_list"));
        assert_eq!(letter.attempt, 0);
        assert_eq!(
            letter.error.as_deref(),
            Some(format!("record {n} is broken").as_str())
        );
        assert_eq!(letter.source_queue.as_deref(), Some(queue));
        assert_eq!(
            letter.correlation_id.as_deref(),
            Some(letter.message_id.as_str())
        );
        assert!(letter.failed_at_ms.is_some());
        assert_eq!(letter.body, format!(r#"{{"n":{n}}}"#));
        assert_eq!(letter.size, letter.body.len());
    }
    wait_until("the listed dead letters are back", WAIT, || async {
        tool.count(queue).await.unwrap() == 5
    })
    .await;
    // Listing twice sees the same: nothing was consumed or reordered.
    let again: Vec<String> = tool
        .list(queue, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message_id)
        .collect();
    assert_eq!(again, dead.ids);
    tool.close().await.unwrap();
    assert_eq!(
        dead.drain_ids(queue, dead.ids.len()).await,
        dead.ids,
        "the DLQ kept its order"
    );

    dead.finish(queue).await;
}

#[tokio::test]
async fn list_with_a_limit_shows_the_oldest() {
    let queue = DLQ_TOOL_LIMIT_QUEUE;
    let dead = Dead::letters(dlq_tool_limit, 4).await;
    let tool = tool().await;

    let letters = tool.list(queue, 2).await.unwrap();

    let ids: Vec<&str> = letters.iter().map(|l| l.message_id.as_str()).collect();
    assert_eq!(ids, dead.ids[..2]);
    wait_until("the listed dead letters are back", WAIT, || async {
        tool.count(queue).await.unwrap() == 4
    })
    .await;
    tool.close().await.unwrap();
    assert_eq!(dead.drain_ids(queue, dead.ids.len()).await, dead.ids);

    dead.finish(queue).await;
}

#[tokio::test]
async fn replay_of_one_id_runs_that_job_again_and_leaves_the_others() {
    let queue = DLQ_TOOL_REPLAY_ID_QUEUE;
    let dead = Dead::letters(dlq_tool_replay_id, 3).await;
    DLQ_TOOL_FAILS.set(queue, false);
    let tool = tool().await;

    let chosen = dead.ids[1].clone();
    let replayed = tool
        .replay(queue, Replay::Id(chosen.clone()))
        .await
        .unwrap();

    assert_eq!(replayed, 1);
    wait_until("the replayed job ran", WAIT, || async {
        runs(queue).iter().any(|run| run.message_id == chosen)
    })
    .await;
    let ran = runs(queue);
    assert_eq!(ran.len(), 1, "only the chosen job ran: {ran:?}");
    assert_eq!(ran[0].attempt, 0, "a replay is a first attempt");
    assert_eq!(ran[0].correlation_id.as_deref(), Some(chosen.as_str()));
    assert_eq!(ran[0].args, serde_json::json!({ "n": 1 }));
    tool.close().await.unwrap();
    assert_eq!(
        dead.drain_ids(queue, 2).await,
        [dead.ids[0].clone(), dead.ids[2].clone()],
        "the others stay, in order"
    );

    dead.finish(queue).await;
}

#[tokio::test]
async fn replay_of_all_runs_every_job_again_and_empties_the_dlq() {
    let queue = DLQ_TOOL_REPLAY_ALL_QUEUE;
    let dead = Dead::letters(dlq_tool_replay_all, 4).await;
    DLQ_TOOL_FAILS.set(queue, false);
    let tool = tool().await;

    let replayed = tool.replay(queue, Replay::All).await.unwrap();

    assert_eq!(replayed, 4);
    wait_until("every replayed job ran", WAIT, || async {
        runs(queue).len() == 4
    })
    .await;
    let mut ran: Vec<String> = runs(queue).into_iter().map(|run| run.message_id).collect();
    ran.sort();
    let mut expected = dead.ids.clone();
    expected.sort();
    assert_eq!(ran, expected);
    assert!(runs(queue).iter().all(|run| run.attempt == 0));
    assert_eq!(dead.broker.ready(&dead_letter_queue(queue)).await, 0);
    assert_eq!(tool.count(queue).await.unwrap(), 0);
    tool.close().await.unwrap();

    dead.finish(queue).await;
}

#[tokio::test]
async fn replay_of_an_unknown_id_is_an_error_and_changes_nothing() {
    let queue = DLQ_TOOL_UNKNOWN_ID_QUEUE;
    let dead = Dead::letters(dlq_tool_unknown_id, 3).await;
    let tool = tool().await;

    let error = tool
        .replay(queue, Replay::Id("no-such-message".into()))
        .await
        .unwrap_err();

    let dlq = dead_letter_queue(queue);
    match &error {
        Error::DeadLetterNotFound {
            queue: named,
            message_id,
        } => {
            assert_eq!(named, &dlq);
            assert_eq!(message_id, "no-such-message");
        }
        other => panic!("expected DeadLetterNotFound, got {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("no-such-message") && text.contains(&dlq),
        "{text}"
    );
    tool.close().await.unwrap();
    assert_eq!(dead.drain_ids(queue, dead.ids.len()).await, dead.ids);
    assert!(runs(queue).is_empty(), "nothing ran");

    dead.finish(queue).await;
}

#[tokio::test]
async fn purge_empties_the_dlq_and_says_how_many() {
    let queue = DLQ_TOOL_PURGE_QUEUE;
    let dead = Dead::letters(dlq_tool_purge, 3).await;
    let tool = tool().await;

    assert_eq!(tool.purge(queue).await.unwrap(), 3);

    assert_eq!(dead.broker.ready(&dead_letter_queue(queue)).await, 0);
    assert_eq!(tool.purge(queue).await.unwrap(), 0);
    tool.close().await.unwrap();

    dead.finish(queue).await;
}

#[tokio::test]
async fn a_missing_dlq_is_reported_by_name() {
    const QUEUE: &str = "eda-test.dlq-tool-missing";
    let broker = Broker::connect().await;
    broker.reset(QUEUE).await;
    let tool = tool().await;

    let list = tool.list(QUEUE, 10).await.unwrap_err();
    let purge = tool.purge(QUEUE).await.unwrap_err();

    for error in [list, purge] {
        assert!(
            matches!(&error, Error::DeadLetterQueueNotFound { queue } if queue == "eda-test.dlq-tool-missing.dlq"),
            "{error:?}"
        );
    }
    // The failed passive declares took only their own channels down.
    broker
        .channel()
        .await
        .queue_declare(
            "eda-test.dlq-tool-missing.dlq".into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(tool.count(QUEUE).await.unwrap(), 0);
    tool.close().await.unwrap();
    broker.cleanup(QUEUE).await;
}

#[tokio::test]
async fn the_worker_command_lists_dead_letters_as_json() {
    let queue = DLQ_TOOL_CLI_LIST_QUEUE;
    let dead = Dead::letters(dlq_tool_cli_list, 3).await;

    let output = Command::new(WORKER)
        .args(["dlq", "list", queue, "--json"])
        .env("AMQP_URL", amqp_url())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let listed = listed.as_array().expect("a JSON array");
    let ids: Vec<&str> = listed
        .iter()
        .map(|letter| letter["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, dead.ids);
    assert_eq!(listed[2]["job"], "dlq_tool_cli_list");
    assert_eq!(listed[2]["attempt"], 0);
    assert_eq!(listed[2]["error"], "record 2 is broken");
    assert_eq!(listed[2]["source_queue"], queue);
    assert_eq!(listed[2]["body"], r#"{"n":2}"#);
    assert_eq!(
        dead.drain_ids(queue, dead.ids.len()).await,
        dead.ids,
        "listing kept them"
    );

    dead.finish(queue).await;
}

#[tokio::test]
async fn the_worker_command_purges_only_with_yes_when_stdin_is_no_terminal() {
    let queue = DLQ_TOOL_CLI_PURGE_QUEUE;
    let dead = Dead::letters(dlq_tool_cli_purge, 2).await;
    let dlq = dead_letter_queue(queue);
    let purge = |extra: &'static [&'static str]| {
        Command::new(WORKER)
            .args(["dlq", "purge", queue])
            .args(extra)
            .env("AMQP_URL", amqp_url())
            .stdin(Stdio::null())
            .output()
    };

    let refused = purge(&[]).await.unwrap();

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(dead.broker.ready(&dlq).await, 2, "nothing was purged");

    let purged = purge(&["--yes"]).await.unwrap();

    let stderr = String::from_utf8_lossy(&purged.stderr);
    assert!(purged.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&purged.stdout);
    assert!(stdout.contains("purged 2"), "{stdout}");
    assert_eq!(dead.broker.ready(&dlq).await, 0);

    dead.finish(queue).await;
}
