//! The inbox: a job's writes and its message's inbox row commit together in
//! the handler's transaction, so a redelivered message is acked without
//! running, two copies racing on two workers run once, and a failed handler
//! leaves neither its writes nor the inbox row.

use eda_worker::postgres::Database;
use eda_worker::wire::{HEADER_ERROR, header_text};
use eda_worker::{Client, EnqueueOptions, Worker};
use eda_worker_tests::jobs::{
    DEDUP_REQUIRED_QUEUE, DbWrite, INBOX_ACK_LOST_QUEUE, INBOX_DEDUP_QUEUE, INBOX_LOCKED_QUEUE,
    INBOX_NO_DATABASE_QUEUE, INBOX_PER_QUEUE_A, INBOX_PER_QUEUE_B, INBOX_RACE_QUEUE,
    INBOX_ROLLBACK_QUEUE, INBOX_SWALLOWED_QUEUE, TX_HELD_CHILD_QUEUE, TX_HELD_QUEUE,
    enqueues_while_holding_the_tx, inbox_ack_lost, inbox_dedup, inbox_locked, inbox_per_queue_a,
    inbox_per_queue_b, inbox_race, inbox_rollback, needs_a_transaction, runs,
    swallows_a_failed_statement,
};
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, database_url, drop_schema, fresh_database, wait_until,
    worker_config,
};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// A migrated schema with an app table `<schema>.effects`.
async fn database(schema: &str) -> (Database, String) {
    let database = fresh_database(schema).await;
    database.migrate().await.unwrap();
    let table = format!("{schema}.effects");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (message_id text NOT NULL, n bigint NOT NULL)"
    )))
    .execute(database.pool())
    .await
    .unwrap();
    (database, table)
}

/// A test's broker, schema (with its `effects` table) and client.
struct Scene {
    broker: Broker,
    database: Database,
    table: String,
    client: Client,
}

impl Scene {
    /// A fresh `queue` and schema, and a worker with the database on `queue`.
    async fn start(queue: &str, schema: &str) -> (Scene, RunningWorker) {
        let broker = Broker::connect().await;
        broker.reset(queue).await;
        let (database, table) = database(schema).await;
        let client = Client::connect(&amqp_url()).await.unwrap();
        let worker =
            RunningWorker::start(&broker, queue, worker_config().database(database.clone())).await;
        let scene = Scene {
            broker,
            database,
            table,
            client,
        };
        (scene, worker)
    }

    /// Drops the schema and `queue` (with its dead letters and delay queues).
    async fn finish(self, queue: &str) {
        self.client.close().await.unwrap();
        drop_schema(&self.database).await;
        self.database.close().await;
        self.broker.cleanup(queue).await;
    }
}

/// Waits until `queue`'s dead-letter queue holds one message; returns its name.
async fn dead_lettered(broker: &Broker, queue: &str) -> String {
    let dlq = format!("{queue}.dlq");
    wait_until("the job is dead-lettered", WAIT, || async {
        broker.ready(&dlq).await == 1
    })
    .await;
    dlq
}

async fn count(database: &Database, statement: String, id: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(statement))
        .bind(id)
        .fetch_one(database.pool())
        .await
        .unwrap()
}

async fn effects(database: &Database, table: &str, id: &str) -> i64 {
    count(
        database,
        format!("SELECT count(*) FROM {table} WHERE message_id = $1"),
        id,
    )
    .await
}

async fn inbox_rows(database: &Database, id: &str) -> i64 {
    let table = format!("{}.inbox", database.schema());
    count(
        database,
        format!("SELECT count(*) FROM {table} WHERE message_id = $1"),
        id,
    )
    .await
}

fn runs_of(queue: &str, id: &str) -> usize {
    runs(queue)
        .iter()
        .filter(|run| run.message_id == id)
        .count()
}

#[tokio::test]
async fn a_redelivered_message_whose_effects_committed_is_acked_without_running() {
    let (scene, worker) = Scene::start(INBOX_DEDUP_QUEUE, "eda_test_inbox_dedup").await;
    let Scene {
        broker,
        database,
        table,
        client,
    } = &scene;

    let id = Uuid::new_v4();
    let args = DbWrite {
        table: table.clone(),
        n: 1,
        hold_ms: 0,
        fail: false,
    };
    let options = EnqueueOptions::default().message_id(id);
    client
        .enqueue_with(inbox_dedup, args.clone(), options.clone())
        .await
        .unwrap();
    let id = id.to_string();
    wait_until("the job ran", WAIT, || async {
        inbox_rows(database, &id).await == 1
    })
    .await;
    // The same message again, as RabbitMQ redelivers it when a worker died
    // after the commit and before the ack.
    client
        .enqueue_with(inbox_dedup, args, options)
        .await
        .unwrap();
    wait_until("both deliveries are acked", WAIT, || async {
        broker.ready(INBOX_DEDUP_QUEUE).await == 0
    })
    .await;
    worker.stop().await.unwrap();

    assert_eq!(runs_of(INBOX_DEDUP_QUEUE, &id), 1, "the handler ran once");
    assert_eq!(effects(database, table, &id).await, 1);
    assert_eq!(inbox_rows(database, &id).await, 1);
    assert_eq!(broker.ready(&format!("{INBOX_DEDUP_QUEUE}.dlq")).await, 0);
    scene.finish(INBOX_DEDUP_QUEUE).await;
}

#[tokio::test]
async fn two_copies_racing_on_two_workers_run_the_handler_once() {
    let broker = Broker::connect().await;
    broker.reset(INBOX_RACE_QUEUE).await;
    let (database, table) = database("eda_test_inbox_race").await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    // One message at a time per worker, so that the broker hands one copy to each.
    let config = || {
        worker_config()
            .database(database.clone())
            .concurrency(1)
            .prefetch(1)
    };
    let first = RunningWorker::start(&broker, INBOX_RACE_QUEUE, config()).await;
    let second = RunningWorker::start(&broker, INBOX_RACE_QUEUE, config()).await;
    wait_until("both workers consume", WAIT, || async {
        broker.consumers(INBOX_RACE_QUEUE).await == 2
    })
    .await;

    let id = Uuid::new_v4();
    let args = DbWrite {
        table: table.clone(),
        n: 2,
        hold_ms: 500,
        fail: false,
    };
    let options = EnqueueOptions::default().message_id(id);
    let (a, b) = tokio::join!(
        client.enqueue_with(inbox_race, args.clone(), options.clone()),
        client.enqueue_with(inbox_race, args, options),
    );
    a.unwrap();
    b.unwrap();
    let id = id.to_string();
    wait_until("both copies are acked", WAIT, || async {
        broker.ready(INBOX_RACE_QUEUE).await == 0 && inbox_rows(&database, &id).await == 1
    })
    .await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    assert_eq!(runs_of(INBOX_RACE_QUEUE, &id), 1, "the handler ran once");
    assert_eq!(effects(&database, &table, &id).await, 1);
    assert_eq!(broker.ready(INBOX_RACE_QUEUE).await, 0);
    assert_eq!(broker.ready(&format!("{INBOX_RACE_QUEUE}.dlq")).await, 0);
    client.close().await.unwrap();
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(INBOX_RACE_QUEUE).await;
}

#[tokio::test]
async fn a_failed_handler_leaves_neither_its_writes_nor_the_inbox_row() {
    let (scene, worker) = Scene::start(INBOX_ROLLBACK_QUEUE, "eda_test_inbox_rollback").await;
    let Scene {
        broker,
        database,
        table,
        client,
    } = &scene;

    let args = DbWrite {
        table: table.clone(),
        n: 3,
        hold_ms: 0,
        fail: true,
    };
    let id = client
        .enqueue(inbox_rollback, args)
        .await
        .unwrap()
        .to_string();
    dead_lettered(broker, INBOX_ROLLBACK_QUEUE).await;
    worker.stop().await.unwrap();

    assert_eq!(runs_of(INBOX_ROLLBACK_QUEUE, &id), 1);
    assert_eq!(effects(database, table, &id).await, 0, "writes rolled back");
    assert_eq!(inbox_rows(database, &id).await, 0, "no inbox row");
    scene.finish(INBOX_ROLLBACK_QUEUE).await;
}

#[tokio::test]
async fn without_a_database_ctx_tx_is_a_clear_error_and_dedup_true_stops_the_worker() {
    let broker = Broker::connect().await;
    broker.reset(INBOX_NO_DATABASE_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let worker = RunningWorker::start(&broker, INBOX_NO_DATABASE_QUEUE, worker_config()).await;
    client.enqueue(needs_a_transaction, 1).await.unwrap();
    let dlq = dead_lettered(&broker, INBOX_NO_DATABASE_QUEUE).await;
    worker.stop().await.unwrap();
    let dead = broker.get(&dlq).await.expect("a dead letter");
    let error = header_text(&dead.delivery.properties, HEADER_ERROR).unwrap_or_default();
    assert_eq!(
        error,
        "job `needs_a_transaction` has no database transaction: the worker has no database: set DATABASE_URL (or WorkerConfig::database)"
    );

    let refused = Worker::new(worker_config().queues([DEDUP_REQUIRED_QUEUE])).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "invalid configuration: job `eda_worker_tests::jobs::dedup_required` declares dedup = true, but no database is configured: set DATABASE_URL (or WorkerConfig::database), or remove `dedup = true`"
    );
    client.close().await.unwrap();
    broker.cleanup(INBOX_NO_DATABASE_QUEUE).await;
}

#[tokio::test]
async fn pruning_deletes_only_rows_older_than_the_retention() {
    let database = fresh_database("eda_test_inbox_prune").await;
    database.migrate().await.unwrap();
    let table = format!("{}.inbox", database.schema());
    // 2,500 rows from 8 days ago (more than one batch) and 3 from an hour ago.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (message_id, job, queue, processed_at) \
         SELECT 'old-' || i, 'j', 'q', now() - interval '8 days' FROM generate_series(1, 2500) i"
    )))
    .execute(database.pool())
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (message_id, job, queue, processed_at) \
         SELECT 'new-' || i, 'j', 'q', now() - interval '1 hour' FROM generate_series(1, 3) i"
    )))
    .execute(database.pool())
    .await
    .unwrap();
    let deleted = database
        .prune_inbox(eda_worker::postgres::DEFAULT_INBOX_RETENTION)
        .await
        .unwrap();
    assert_eq!(deleted, 2500);
    let left: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT message_id FROM {table} ORDER BY message_id"
    )))
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(left, ["new-1", "new-2", "new-3"]);
    drop_schema(&database).await;
    database.close().await;
}

#[tokio::test]
async fn a_handler_that_ignored_a_failed_statement_is_not_acked_as_done() {
    let (scene, worker) = Scene::start(INBOX_SWALLOWED_QUEUE, "eda_test_inbox_swallowed").await;
    let Scene {
        broker,
        database,
        table,
        client,
    } = &scene;
    let args = DbWrite {
        table: table.clone(),
        n: 4,
        hold_ms: 0,
        fail: false,
    };
    let id = client
        .enqueue(swallows_a_failed_statement, args)
        .await
        .unwrap()
        .to_string();
    let dlq = dead_lettered(broker, INBOX_SWALLOWED_QUEUE).await;
    worker.stop().await.unwrap();

    let dead = broker.get(&dlq).await.expect("a dead letter");
    let error = header_text(&dead.delivery.properties, HEADER_ERROR).unwrap_or_default();
    assert!(
        error.contains("its effects were not committed")
            && error.contains("a statement in its transaction failed"),
        "{error}"
    );
    assert_eq!(runs_of(INBOX_SWALLOWED_QUEUE, &id), 1);
    assert_eq!(effects(database, table, &id).await, 0);
    assert_eq!(inbox_rows(database, &id).await, 0);
    scene.finish(INBOX_SWALLOWED_QUEUE).await;
}

#[tokio::test]
async fn enqueueing_while_holding_the_transaction_is_an_error_and_tx_enqueue_works() {
    let (scene, worker) = Scene::start(TX_HELD_QUEUE, "eda_test_tx_held").await;
    let Scene { broker, client, .. } = &scene;
    broker.reset(TX_HELD_CHILD_QUEUE).await;
    client
        .enqueue(enqueues_while_holding_the_tx, 7)
        .await
        .unwrap();
    // The relay inside the worker sends the child the handler put in the outbox.
    wait_until("the child arrives", WAIT, || async {
        broker.ready(TX_HELD_CHILD_QUEUE).await == 1
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(broker.ready(&format!("{TX_HELD_QUEUE}.dlq")).await, 0);
    assert_eq!(broker.ready(TX_HELD_QUEUE).await, 0);
    broker.reset(TX_HELD_CHILD_QUEUE).await;
    scene.finish(TX_HELD_QUEUE).await;
}

#[tokio::test]
async fn one_message_id_on_two_queues_runs_once_in_each() {
    let broker = Broker::connect().await;
    broker.reset(INBOX_PER_QUEUE_A).await;
    broker.reset(INBOX_PER_QUEUE_B).await;
    let (database, table) = database("eda_test_inbox_per_queue").await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let config = || worker_config().database(database.clone());
    let a = RunningWorker::start(&broker, INBOX_PER_QUEUE_A, config()).await;
    let b = RunningWorker::start(&broker, INBOX_PER_QUEUE_B, config()).await;
    let id = Uuid::new_v4();
    let args = DbWrite {
        table: table.clone(),
        n: 5,
        hold_ms: 0,
        fail: false,
    };
    let options = EnqueueOptions::default().message_id(id);
    client
        .enqueue_with(inbox_per_queue_a, args.clone(), options.clone())
        .await
        .unwrap();
    client
        .enqueue_with(inbox_per_queue_b, args, options)
        .await
        .unwrap();
    let id = id.to_string();
    wait_until("both ran", WAIT, || async {
        inbox_rows(&database, &id).await == 2
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_eq!(effects(&database, &table, &id).await, 2);
    assert_eq!(runs_of(INBOX_PER_QUEUE_A, &id), 1);
    assert_eq!(runs_of(INBOX_PER_QUEUE_B, &id), 1);
    client.close().await.unwrap();
    drop_schema(&database).await;
    database.close().await;
    broker.reset(INBOX_PER_QUEUE_A).await;
    broker.cleanup(INBOX_PER_QUEUE_B).await;
}

#[tokio::test]
async fn a_worker_killed_after_its_commit_and_before_its_ack_does_not_run_the_job_twice() {
    let broker = Broker::connect().await;
    broker.reset(INBOX_ACK_LOST_QUEUE).await;
    let (database, table) = database("eda_test_inbox_ack_lost").await;
    // The commit of the job's effects takes 2 s (a deferred trigger sleeps in
    // it), which leaves the time to kill the worker after it sent COMMIT and
    // before it could ack: PostgreSQL finishes the commit without its client.
    let schema = database.schema().to_string();
    for statement in [
        format!(
            "CREATE FUNCTION {schema}.slow_commit() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        ),
        format!(
            "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.slow_commit()"
        ),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(database.pool())
            .await
            .unwrap();
    }
    let mut first = tokio::process::Command::new(WORKER)
        .args(["run", "--queues", INBOX_ACK_LOST_QUEUE])
        .env("AMQP_URL", amqp_url())
        .env("DATABASE_URL", database_url())
        .env("EDA_DB_SCHEMA", &schema)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn test-worker");
    wait_until("the first worker consumes", WAIT, || async {
        broker.consumers(INBOX_ACK_LOST_QUEUE).await == 1
    })
    .await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    let args = DbWrite {
        table: table.clone(),
        n: 6,
        hold_ms: 0,
        fail: false,
    };
    let id = client
        .enqueue(inbox_ack_lost, args)
        .await
        .unwrap()
        .to_string();
    wait_until("the first worker is committing", WAIT, || async {
        let committing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'COMMIT' AND wait_event = 'PgSleep'",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        committing > 0
    })
    .await;
    first.kill().await.expect("kill the first worker");
    assert_eq!(inbox_rows(&database, &id).await, 0, "still committing");

    // The broker gives the unacked message to a second worker, whose claim
    // waits for the first one's commit, then finds the row.
    let second = RunningWorker::start(
        &broker,
        INBOX_ACK_LOST_QUEUE,
        worker_config().database(database.clone()),
    )
    .await;
    // Once the second worker holds the copy and the first commit is done,
    // its graceful stop lets the claim finish and acks; anything unacked
    // would be back in the queue after it.
    wait_until("the second worker holds the copy", WAIT, || async {
        inbox_rows(&database, &id).await == 1 && broker.ready(INBOX_ACK_LOST_QUEUE).await == 0
    })
    .await;
    second.stop().await.unwrap();

    assert_eq!(
        runs_of(INBOX_ACK_LOST_QUEUE, &id),
        0,
        "the second worker did not run the job"
    );
    assert_eq!(effects(&database, &table, &id).await, 1, "effects once");
    assert_eq!(broker.ready(INBOX_ACK_LOST_QUEUE).await, 0);
    assert_eq!(
        broker.ready(&format!("{INBOX_ACK_LOST_QUEUE}.dlq")).await,
        0
    );
    client.close().await.unwrap();
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(INBOX_ACK_LOST_QUEUE).await;
}

#[tokio::test]
async fn a_claim_that_waits_past_the_lock_timeout_fails_the_attempt_without_running() {
    let (scene, worker) = Scene::start(INBOX_LOCKED_QUEUE, "eda_test_inbox_locked").await;
    let Scene {
        broker,
        database,
        table,
        client,
    } = &scene;
    // Another transaction, stuck, holds this message's inbox row.
    let id = Uuid::new_v4();
    let mut stuck = database.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.inbox (queue, message_id, job) VALUES ($1, $2, 'inbox_locked')",
        database.schema()
    )))
    .bind(INBOX_LOCKED_QUEUE)
    .bind(id.to_string())
    .execute(&mut *stuck)
    .await
    .unwrap();
    let args = DbWrite {
        table: table.clone(),
        n: 8,
        hold_ms: 0,
        fail: false,
    };
    client
        .enqueue_with(inbox_locked, args, EnqueueOptions::default().message_id(id))
        .await
        .unwrap();
    // The job's timeout is 1 s: the claim gives up after 6 s.
    let dlq = dead_lettered(broker, INBOX_LOCKED_QUEUE).await;
    worker.stop().await.unwrap();
    stuck.rollback().await.unwrap();

    let dead = broker.get(&dlq).await.expect("a dead letter");
    let error = header_text(&dead.delivery.properties, HEADER_ERROR).unwrap_or_default();
    assert!(error.contains("lock timeout"), "{error}");
    let id = id.to_string();
    assert_eq!(runs_of(INBOX_LOCKED_QUEUE, &id), 0, "the handler never ran");
    assert_eq!(effects(database, table, &id).await, 0);
    assert_eq!(inbox_rows(database, &id).await, 0);
    scene.finish(INBOX_LOCKED_QUEUE).await;
}
