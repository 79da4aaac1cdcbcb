//! The inbox: a job's writes and its message's inbox row commit together in
//! the handler's transaction, so a redelivered message is acked without
//! running, two copies racing on two workers run once, and a failed handler
//! leaves neither its writes nor the inbox row.

use eda_worker::postgres::{DEFAULT_INBOX_RETENTION, Database};
use eda_worker::{EnqueueOptions, Job, MessageId, Worker};
use eda_worker_tests::broker::{error_header, foreign_properties};
use eda_worker_tests::database::{
    database_url, effects_table, execute, inbox_rows, migrated_database, remove_database,
    rows_for_message, sleeping_in, slow_trigger_function,
};
use eda_worker_tests::jobs::inbox::{
    DbWrite, dedup_required, inbox_ack_lost, inbox_dedup, inbox_foreign_id, inbox_locked,
    inbox_per_queue_a, inbox_per_queue_b, inbox_race, inbox_rollback, leaks_a_savepoint,
    needs_a_transaction, swallows_a_failed_statement, uses_a_savepoint,
};
use eda_worker_tests::jobs::runs_of;
use eda_worker_tests::process::database_env;
use eda_worker_tests::{Scene, SceneBuilder, WAIT, wait_until, worker_command, worker_config};
use sqlx::AssertSqlSafe;

/// Starts the scene (built with a database) and creates the app table the
/// jobs write their effects into; returns both.
async fn inbox_scene(builder: SceneBuilder) -> (Scene, String) {
    let scene = builder.start().await;
    let table = effects_table(scene.database()).await;
    (scene, table)
}

#[tokio::test]
async fn a_redelivered_message_whose_effects_committed_is_acked_without_running() {
    let (mut scene, table) =
        inbox_scene(Scene::of(inbox_dedup).database("eda_test_inbox_dedup")).await;
    let queue = <inbox_dedup as Job>::QUEUE;
    let database = scene.database().clone();

    let id = MessageId::new();
    let args = DbWrite::new(&table, 1);
    let options = EnqueueOptions::default().message_id(id);
    scene
        .enqueue_with(inbox_dedup, args.clone(), options.clone())
        .await;
    let id = id.to_string();
    wait_until("the job ran", WAIT, || async {
        inbox_rows(&database, &id).await == 1
    })
    .await;
    // The same message again, as RabbitMQ redelivers it when a worker died
    // after the commit and before the ack.
    scene.enqueue_with(inbox_dedup, args, options).await;
    wait_until("both deliveries are acked", WAIT, || async {
        scene.ready().await == 0
    })
    .await;
    scene.stop_workers().await;

    assert_eq!(runs_of(queue, &id).len(), 1, "the handler ran once");
    assert_eq!(rows_for_message(&database, &table, &id).await, 1);
    assert_eq!(inbox_rows(&database, &id).await, 1);
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn two_copies_racing_on_two_workers_run_the_handler_once() {
    // One message at a time per worker, so that the broker hands one copy to each.
    let (mut scene, table) = inbox_scene(
        Scene::of(inbox_race)
            .database("eda_test_inbox_race")
            .worker_config(|config| config.concurrency(1).prefetch(1))
            .workers(2),
    )
    .await;
    let queue = <inbox_race as Job>::QUEUE;
    let database = scene.database().clone();

    let id = MessageId::new();
    let args = DbWrite {
        hold_ms: 500,
        ..DbWrite::new(&table, 2)
    };
    let options = EnqueueOptions::default().message_id(id);
    let (a, b) = tokio::join!(
        scene
            .client
            .enqueue_with(inbox_race, args.clone(), options.clone()),
        scene.client.enqueue_with(inbox_race, args, options),
    );
    a.unwrap();
    b.unwrap();
    let id = id.to_string();
    wait_until("both copies are acked", WAIT, || async {
        scene.ready().await == 0 && inbox_rows(&database, &id).await == 1
    })
    .await;
    scene.stop_workers().await;

    assert_eq!(runs_of(queue, &id).len(), 1, "the handler ran once");
    assert_eq!(rows_for_message(&database, &table, &id).await, 1);
    assert_eq!(scene.ready().await, 0);
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_failed_handler_leaves_neither_its_writes_nor_the_inbox_row() {
    let (mut scene, table) =
        inbox_scene(Scene::of(inbox_rollback).database("eda_test_inbox_rollback")).await;
    let queue = <inbox_rollback as Job>::QUEUE;

    let args = DbWrite {
        fail: true,
        ..DbWrite::new(&table, 3)
    };
    let id = scene.enqueue(inbox_rollback, args).await;
    scene.stop_once_dead_lettered(1).await;

    let database = scene.database();
    assert_eq!(runs_of(queue, &id).len(), 1);
    assert_eq!(
        rows_for_message(database, &table, &id).await,
        0,
        "writes rolled back"
    );
    assert_eq!(inbox_rows(database, &id).await, 0, "no inbox row");
    scene.finish().await;
}

#[tokio::test]
async fn without_a_database_ctx_tx_is_a_clear_error_and_dedup_true_stops_the_worker() {
    let mut scene = Scene::of(needs_a_transaction).start().await;
    scene.enqueue(needs_a_transaction, 1).await;
    scene.stop_once_dead_lettered(1).await;
    let dead = scene.take_dead_letters().await;
    assert_eq!(
        error_header(&dead[0]),
        "job `needs_a_transaction` has no database transaction: the worker has no database: set DATABASE_URL (or WorkerConfig::database)"
    );

    let queue = <dedup_required as Job>::QUEUE;
    let refused = Worker::new(worker_config().queues([queue])).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "invalid configuration: job `eda_worker_tests::jobs::inbox::dedup_required` declares dedup = true, but no database is configured: set DATABASE_URL (or WorkerConfig::database), or remove `dedup = true`"
    );
    scene.finish().await;
}

#[tokio::test]
async fn pruning_deletes_only_rows_older_than_the_retention() {
    let database = migrated_database("eda_test_inbox_prune").await;
    let table = format!("{}.inbox", database.schema());
    // 2,500 rows from 8 days ago (more than one batch) and 3 from an hour ago.
    for (prefix, count, age) in [("old", 2500, "8 days"), ("new", 3, "1 hour")] {
        execute(
            &database,
            format!(
                "INSERT INTO {table} (message_id, job, queue, processed_at) \
                 SELECT '{prefix}-' || i, 'j', 'q', now() - interval '{age}' \
                 FROM generate_series(1, {count}) i"
            ),
        )
        .await;
    }
    let deleted = database.prune_inbox(DEFAULT_INBOX_RETENTION).await.unwrap();
    assert_eq!(deleted, 2500);
    let left: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT message_id FROM {table} ORDER BY message_id"
    )))
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(left, ["new-1", "new-2", "new-3"]);
    remove_database(database).await;
}

#[tokio::test]
async fn a_handler_that_ignored_a_failed_statement_is_not_acked_as_done() {
    let scene = Scene::of(swallows_a_failed_statement).database("eda_test_inbox_swallowed");
    ran_once_and_committed_nothing(
        scene,
        swallows_a_failed_statement,
        4,
        "a statement in its transaction failed",
    )
    .await;
}

#[tokio::test]
async fn one_message_id_on_two_queues_runs_once_in_each() {
    let (mut scene, table) = inbox_scene(
        Scene::of(inbox_per_queue_a)
            .also(inbox_per_queue_b)
            .database("eda_test_inbox_per_queue"),
    )
    .await;
    let (a, b) = (
        <inbox_per_queue_a as Job>::QUEUE,
        <inbox_per_queue_b as Job>::QUEUE,
    );
    scene.start_worker_on(b).await;
    let database = scene.database().clone();
    let id = MessageId::new();
    let args = DbWrite::new(&table, 5);
    let options = EnqueueOptions::default().message_id(id);
    scene
        .enqueue_with(inbox_per_queue_a, args.clone(), options.clone())
        .await;
    scene.enqueue_with(inbox_per_queue_b, args, options).await;
    let id = id.to_string();
    wait_until("both ran", WAIT, || async {
        inbox_rows(&database, &id).await == 2
    })
    .await;
    scene.stop_workers().await;
    assert_eq!(rows_for_message(&database, &table, &id).await, 2);
    assert_eq!(runs_of(a, &id).len(), 1);
    assert_eq!(runs_of(b, &id).len(), 1);
    scene.finish().await;
}

#[tokio::test]
async fn a_worker_killed_after_its_commit_and_before_its_ack_does_not_run_the_job_twice() {
    let (mut scene, table) = inbox_scene(
        Scene::of(inbox_ack_lost)
            .database("eda_test_inbox_ack_lost")
            .workers(0),
    )
    .await;
    let queue = <inbox_ack_lost as Job>::QUEUE;
    let database = scene.database().clone();
    // The commit of the job's effects takes 2 s (a deferred trigger sleeps in
    // it), which leaves the time to kill the worker after it sent COMMIT and
    // before it could ack: PostgreSQL finishes the commit without its client.
    let slow_commit = slow_trigger_function(&database, "slow_commit").await;
    execute(
        &database,
        format!(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {slow_commit}()"
        ),
    )
    .await;
    let mut first = worker_command!("run", "--queues", queue)
        .envs(database_env(&database))
        .spawn()
        .expect("spawn test-worker");
    wait_until("the first worker consumes", WAIT, || async {
        scene.broker.consumers(queue).await == 1
    })
    .await;
    let id = scene.enqueue(inbox_ack_lost, DbWrite::new(&table, 6)).await;
    wait_until("the first worker is committing", WAIT, || async {
        sleeping_in(&database, "COMMIT").await
    })
    .await;
    first.kill().await.expect("kill the first worker");
    assert_eq!(inbox_rows(&database, &id).await, 0, "still committing");

    // The broker gives the unacked message to a second worker, whose claim
    // waits for the first one's commit, then finds the row.
    scene.start_worker().await;
    // Once the second worker holds the copy and the first commit is done,
    // its graceful stop lets the claim finish and acks; anything unacked
    // would be back in the queue after it.
    wait_until("the second worker holds the copy", WAIT, || async {
        inbox_rows(&database, &id).await == 1 && scene.ready().await == 0
    })
    .await;
    scene.stop_workers().await;

    assert_eq!(
        runs_of(queue, &id).len(),
        0,
        "the second worker did not run the job"
    );
    assert_eq!(
        rows_for_message(&database, &table, &id).await,
        1,
        "effects once"
    );
    assert_eq!(scene.ready().await, 0);
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_claim_that_waits_past_the_lock_timeout_fails_the_attempt_without_running() {
    let (mut scene, table) =
        inbox_scene(Scene::of(inbox_locked).database("eda_test_inbox_locked")).await;
    let queue = <inbox_locked as Job>::QUEUE;
    let database = scene.database().clone();
    // Another transaction, stuck, holds this message's inbox row.
    let id = MessageId::new();
    let mut stuck = database.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.inbox (queue, message_id, job) VALUES ($1, $2, 'inbox_locked')",
        database.schema()
    )))
    .bind(queue)
    .bind(id.to_string())
    .execute(&mut *stuck)
    .await
    .unwrap();
    scene
        .enqueue_with(
            inbox_locked,
            DbWrite::new(&table, 8),
            EnqueueOptions::default().message_id(id),
        )
        .await;
    // The job's timeout is 1 s: the claim gives up after 6 s.
    scene.stop_once_dead_lettered(1).await;
    stuck.rollback().await.unwrap();

    let dead = scene.take_dead_letters().await;
    let error = error_header(&dead[0]);
    assert!(error.contains("lock timeout"), "{error}");
    let id = id.to_string();
    assert_eq!(runs_of(queue, &id).len(), 0, "the handler never ran");
    assert_eq!(rows_for_message(&database, &table, &id).await, 0);
    assert_eq!(inbox_rows(&database, &id).await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_foreign_message_id_with_quotes_and_backslashes_is_claimed_verbatim_and_deduplicated() {
    // One connection for the worker: the duplicate's refused claim must hand
    // it back usable for the next message.
    let database = migrated_database("eda_test_inbox_foreign_id").await;
    let one_connection =
        Database::connect_with_pool_size(&database_url(), database.schema().clone(), 1)
            .await
            .expect("connect");
    let table = effects_table(&database).await;
    let worker_database = one_connection.clone();
    let mut scene = Scene::of(inbox_foreign_id)
        .worker_config(|config| config.database(worker_database))
        .start()
        .await;
    let queue = <inbox_foreign_id as Job>::QUEUE;
    let odd = r#"o'brien\'); DELETE FROM inbox; --$$\"#;
    let next = MessageId::new().to_string();
    let body = |n| serde_json::to_vec(&DbWrite::new(&table, n)).expect("json");
    for (id, n) in [(odd, 1), (odd, 1), (next.as_str(), 2)] {
        let properties = foreign_properties(id, Some(<inbox_foreign_id as Job>::NAME));
        scene
            .broker
            .publish_raw("", queue, &body(n), properties)
            .await;
    }
    wait_until("all three deliveries are settled", WAIT, || async {
        inbox_rows(&database, &next).await == 1 && scene.ready().await == 0
    })
    .await;
    scene.stop_workers().await;

    assert_eq!(runs_of(queue, odd).len(), 1, "the handler ran once");
    assert_eq!(
        inbox_rows(&database, odd).await,
        1,
        "the id is stored as sent"
    );
    assert_eq!(rows_for_message(&database, &table, odd).await, 1);
    assert_eq!(runs_of(queue, &next).len(), 1);
    assert_eq!(rows_for_message(&database, &table, &next).await, 1);
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
    one_connection.close().await;
    remove_database(database).await;
}

#[tokio::test]
async fn a_savepoint_rolled_back_in_the_handler_keeps_its_transaction_and_inbox_row() {
    let (mut scene, table) =
        inbox_scene(Scene::of(uses_a_savepoint).database("eda_test_inbox_savepoint")).await;
    let queue = <uses_a_savepoint as Job>::QUEUE;
    let database = scene.database().clone();
    let id = scene
        .enqueue(uses_a_savepoint, DbWrite::new(&table, 9))
        .await;
    wait_until("the job ran", WAIT, || async {
        scene.ready().await == 0 && runs_of(queue, &id).len() == 1
    })
    .await;
    scene.stop_workers().await;

    assert_eq!(rows_for_message(&database, &table, &id).await, 1);
    assert_eq!(
        inbox_rows(&database, &id).await,
        1,
        "the claim committed with the effect"
    );
    assert_eq!(scene.dead_letters_ready().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_savepoint_left_open_by_the_handler_commits_nothing() {
    let scene = Scene::of(leaks_a_savepoint).database("eda_test_inbox_leaked_savepoint");
    ran_once_and_committed_nothing(scene, leaks_a_savepoint, 10, "savepoint").await;
}

/// Runs `job` (a handler that writes its effect and returns `Ok` from a
/// transaction the worker must not commit) once, and asserts that it was
/// dead-lettered with a reason naming `why`, leaving neither its effect
/// nor its inbox row.
async fn ran_once_and_committed_nothing<J: Job<Args = DbWrite>>(
    builder: SceneBuilder,
    job: J,
    n: u32,
    why: &str,
) {
    let (mut scene, table) = inbox_scene(builder).await;
    let id = scene.enqueue(job, DbWrite::new(&table, n)).await;
    scene.stop_once_dead_lettered(1).await;

    let dead = scene.take_dead_letters().await;
    let error = error_header(&dead[0]);
    assert!(
        error.contains("its effects were not committed") && error.contains(why),
        "{error}"
    );
    let database = scene.database();
    assert_eq!(runs_of(J::QUEUE, &id).len(), 1);
    assert_eq!(rows_for_message(database, &table, &id).await, 0);
    assert_eq!(inbox_rows(database, &id).await, 0);
    scene.finish().await;
}
