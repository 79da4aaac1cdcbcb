//! Dead-letter tooling against the real broker: `list` leaves the DLQ as it
//! was, `replay` runs jobs again as first attempts and removes only what it
//! replayed, `purge` empties it; and the `worker dlq` command does the same.

use eda_worker::{Error, Job};
use eda_worker_tests::broker::message_id;
use eda_worker_tests::jobs::Numbered;
use eda_worker_tests::jobs::dead_letter_admin::{
    DLQ_TOOL_FAILS, dlq_tool_cli_list, dlq_tool_cli_purge, dlq_tool_limit, dlq_tool_list,
    dlq_tool_purge, dlq_tool_replay_all, dlq_tool_replay_id, dlq_tool_unknown_id,
};
use eda_worker_tests::jobs::runs;
use eda_worker_tests::{DeadLetters, Replay, Scene, WAIT, amqp_url, wait_until, worker_command};

/// A job queue with real dead letters, made by a worker that still runs.
struct Dead {
    scene: Scene,
    /// The dead letters' message ids, oldest first.
    ids: Vec<String>,
}

impl Dead {
    /// Runs `job` `count` times while it fails, one at a time (so the DLQ
    /// holds them in enqueue order), and waits until all are dead letters.
    async fn letters<J: Job<Args = Numbered>>(job: J, count: u32) -> Self {
        DLQ_TOOL_FAILS.set(J::QUEUE, true);
        let scene = Scene::of(job)
            .worker_config(|config| config.concurrency(1).prefetch(1))
            .start()
            .await;
        let mut ids = Vec::new();
        for n in 0..count {
            let id = scene.enqueue(job, Numbered { n }).await;
            ids.push(id.to_string());
        }
        scene.wait_for_dead_letters(count).await;
        Dead { scene, ids }
    }

    /// Waits until the DLQ holds `count` ready messages (borrowed ones are
    /// given back asynchronously), takes them all off and returns their ids,
    /// in queue order.
    async fn drain_ids(&self, count: u32) -> Vec<String> {
        self.scene.wait_for_dead_letters(count).await;
        self.scene
            .take_dead_letters()
            .await
            .iter()
            .map(message_id)
            .collect()
    }

    /// [`Dead::drain_ids`] of all the dead letters made.
    async fn drain_all_ids(&self) -> Vec<String> {
        self.drain_ids(u32::try_from(self.ids.len()).unwrap()).await
    }

    /// Waits until the tool counts all the dead letters made again (a
    /// listing borrows them and gives them back).
    async fn wait_until_all_back(&self, tool: &DeadLetters) {
        let count = u32::try_from(self.ids.len()).unwrap();
        wait_until("the listed dead letters are back", WAIT, || async {
            tool.count(self.scene.queue()).await.unwrap() == count
        })
        .await;
    }
}

async fn tool() -> DeadLetters {
    DeadLetters::connect(&amqp_url()).await.unwrap()
}

#[tokio::test]
async fn list_shows_the_dead_letters_and_leaves_them_in_place_and_in_order() {
    let queue = <dlq_tool_list as Job>::QUEUE;
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
    dead.wait_until_all_back(&tool).await;
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
        dead.drain_all_ids().await,
        dead.ids,
        "the DLQ kept its order"
    );
    dead.scene.finish().await;
}

#[tokio::test]
async fn list_with_a_limit_shows_the_oldest() {
    let queue = <dlq_tool_limit as Job>::QUEUE;
    let dead = Dead::letters(dlq_tool_limit, 4).await;
    let tool = tool().await;

    let letters = tool.list(queue, 2).await.unwrap();

    let ids: Vec<&str> = letters.iter().map(|l| l.message_id.as_str()).collect();
    assert_eq!(ids, dead.ids[..2]);
    dead.wait_until_all_back(&tool).await;
    tool.close().await.unwrap();
    assert_eq!(dead.drain_all_ids().await, dead.ids);
    dead.scene.finish().await;
}

#[tokio::test]
async fn replay_of_one_id_runs_that_job_again_and_leaves_the_others() {
    let queue = <dlq_tool_replay_id as Job>::QUEUE;
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
        dead.drain_ids(2).await,
        [dead.ids[0].clone(), dead.ids[2].clone()],
        "the others stay, in order"
    );
    dead.scene.finish().await;
}

#[tokio::test]
async fn replay_of_all_runs_every_job_again_and_empties_the_dlq() {
    let queue = <dlq_tool_replay_all as Job>::QUEUE;
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
    assert_eq!(dead.scene.dead_letters_ready().await, 0);
    assert_eq!(tool.count(queue).await.unwrap(), 0);
    tool.close().await.unwrap();
    dead.scene.finish().await;
}

#[tokio::test]
async fn replay_of_an_unknown_id_is_an_error_and_changes_nothing() {
    let queue = <dlq_tool_unknown_id as Job>::QUEUE;
    let dead = Dead::letters(dlq_tool_unknown_id, 3).await;
    let tool = tool().await;

    let error = tool
        .replay(queue, Replay::Id("no-such-message".into()))
        .await
        .unwrap_err();

    let dlq = dead.scene.dead_letter_queue();
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
    assert_eq!(dead.drain_all_ids().await, dead.ids);
    assert!(runs(queue).is_empty(), "nothing ran");
    dead.scene.finish().await;
}

#[tokio::test]
async fn purge_empties_the_dlq_and_says_how_many() {
    let queue = <dlq_tool_purge as Job>::QUEUE;
    let dead = Dead::letters(dlq_tool_purge, 3).await;
    let tool = tool().await;

    assert_eq!(tool.purge(queue).await.unwrap(), 3);

    assert_eq!(dead.scene.dead_letters_ready().await, 0);
    assert_eq!(tool.purge(queue).await.unwrap(), 0);
    tool.close().await.unwrap();
    dead.scene.finish().await;
}

#[tokio::test]
async fn a_missing_dlq_is_reported_by_name() {
    let scene = Scene::on_queue("eda-test.dlq-tool-missing")
        .workers(0)
        .start()
        .await;
    let queue = scene.queue();
    let dlq = scene.dead_letter_queue();
    let tool = tool().await;

    let list = tool.list(queue, 10).await.unwrap_err();
    let purge = tool.purge(queue).await.unwrap_err();

    for error in [list, purge] {
        assert!(
            matches!(&error, Error::DeadLetterQueueNotFound { queue } if queue == "eda-test.dlq-tool-missing.dlq"),
            "{error:?}"
        );
    }
    // The failed passive declares took only their own channels down.
    scene.broker.declare_durable(&dlq, Default::default()).await;
    assert_eq!(tool.count(queue).await.unwrap(), 0);
    tool.close().await.unwrap();
    scene.finish().await;
}

#[tokio::test]
async fn the_worker_command_lists_dead_letters_as_json() {
    let queue = <dlq_tool_cli_list as Job>::QUEUE;
    let dead = Dead::letters(dlq_tool_cli_list, 3).await;

    let output = worker_command!("dlq", "list", queue, "--json")
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
    assert_eq!(dead.drain_all_ids().await, dead.ids, "listing kept them");
    dead.scene.finish().await;
}

#[tokio::test]
async fn the_worker_command_purges_only_with_yes_when_stdin_is_no_terminal() {
    let queue = <dlq_tool_cli_purge as Job>::QUEUE;
    let dead = Dead::letters(dlq_tool_cli_purge, 2).await;

    let refused = worker_command!("dlq", "purge", queue)
        .output()
        .await
        .unwrap();

    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(
        dead.scene.dead_letters_ready().await,
        2,
        "nothing was purged"
    );

    let purged = worker_command!("dlq", "purge", queue, "--yes")
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&purged.stderr);
    assert!(purged.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&purged.stdout);
    assert!(stdout.contains("purged 2"), "{stdout}");
    assert_eq!(dead.scene.dead_letters_ready().await, 0);
    dead.scene.finish().await;
}
