//! The transactional outbox and its relay: a rolled-back row is never sent, a
//! committed one is sent with the row's message id, two relays send each row
//! once, and a re-send after a relay crash is dropped by the consumer's inbox.

use std::collections::HashSet;
use std::time::Duration;

use eda_worker::outbox::{self, Relay};
use eda_worker::postgres::Database;
use eda_worker_tests::jobs::{
    DbWrite, OUTBOX_EXCHANGE_QUEUE, OUTBOX_KEYWORD_SCHEMA_QUEUE, OUTBOX_QUEUE,
    OUTBOX_REDECLARE_OTHER_QUEUE, OUTBOX_REDECLARE_QUEUE, OUTBOX_RESEND_QUEUE,
    OUTBOX_TWO_RELAYS_QUEUE, outbox_keyword_schema, outbox_redeclare, outbox_redeclare_other,
    outbox_resend, outbox_target, outbox_two_relays, runs,
};
use eda_worker_tests::{
    Broker, RunningWorker, WAIT, amqp_url, database_url, drop_schema, fresh_database, wait_until,
    worker_config,
};
use sqlx::AssertSqlSafe;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

async fn migrated(schema: &str) -> Database {
    let database = fresh_database(schema).await;
    database.migrate().await.unwrap();
    database
}

async fn pending(database: &Database) -> i64 {
    outbox::status(database).await.unwrap().pending
}

fn start_relay(
    database: &Database,
) -> (CancellationToken, JoinHandle<Result<(), eda_worker::Error>>) {
    let token = CancellationToken::new();
    let relay = Relay::new(database.clone(), amqp_url());
    (token.clone(), tokio::spawn(relay.run(token)))
}

async fn stop_relay(relay: (CancellationToken, JoinHandle<Result<(), eda_worker::Error>>)) {
    relay.0.cancel();
    tokio::time::timeout(WAIT, relay.1)
        .await
        .expect("the relay stops in time")
        .expect("relay task")
        .expect("relay result");
}

#[tokio::test]
async fn a_rolled_back_row_is_never_sent_and_a_committed_one_is_sent_with_its_id() {
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_QUEUE).await;
    let database = migrated("eda_test_outbox_commit").await;
    let relay = start_relay(&database);

    let mut tx = database.pool().begin().await.unwrap();
    outbox::Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, outbox_target, 1)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = database.pool().begin().await.unwrap();
    let id = outbox::Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, outbox_target, 2)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    wait_until("the committed row is sent and deleted", WAIT, || async {
        broker.ready(OUTBOX_QUEUE).await == 1 && pending(&database).await == 0
    })
    .await;
    stop_relay(relay).await;
    let message = broker.get(OUTBOX_QUEUE).await.expect("one message");
    assert_eq!(message.delivery.data, b"2");
    assert_eq!(
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        Some(id.to_string()),
        "the message carries the id fixed at insert"
    );
    assert_eq!(
        message
            .delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str().to_owned()),
        Some("outbox_target".to_owned())
    );
    assert!(
        broker.get(OUTBOX_QUEUE).await.is_none(),
        "the rolled-back row was never sent"
    );
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_QUEUE).await;
}

#[tokio::test]
async fn two_relays_send_each_of_ten_thousand_rows_once() {
    const ROWS: u32 = 10_000;
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_TWO_RELAYS_QUEUE).await;
    let database = migrated("eda_test_outbox_two_relays").await;
    let outbox = outbox::Outbox::in_schema(database.schema().clone());
    let mut tx = database.pool().begin().await.unwrap();
    let mut ids = HashSet::new();
    for n in 0..ROWS {
        ids.insert(
            outbox
                .enqueue(&mut tx, outbox_two_relays, n)
                .await
                .unwrap()
                .to_string(),
        );
    }
    tx.commit().await.unwrap();

    let first = start_relay(&database);
    let second = start_relay(&database);
    wait_until(
        "every row is sent and deleted",
        Duration::from_secs(120),
        || async { pending(&database).await == 0 },
    )
    .await;
    stop_relay(first).await;
    stop_relay(second).await;
    // Rows are deleted only after their publish was confirmed: all are on the queue.
    assert_eq!(
        broker.ready(OUTBOX_TWO_RELAYS_QUEUE).await,
        ROWS,
        "no row sent twice"
    );
    let sent: HashSet<String> = broker
        .drain(OUTBOX_TWO_RELAYS_QUEUE)
        .await
        .iter()
        .filter_map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
        })
        .collect();
    assert_eq!(sent, ids, "each row's id, once");
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_TWO_RELAYS_QUEUE).await;
}

#[tokio::test]
async fn a_row_re_sent_after_a_relay_crash_is_dropped_by_the_consumers_inbox() {
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_RESEND_QUEUE).await;
    let database = migrated("eda_test_outbox_resend").await;
    let table = format!("{}.effects", database.schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (message_id text NOT NULL, n bigint NOT NULL)"
    )))
    .execute(database.pool())
    .await
    .unwrap();
    let args = DbWrite {
        table: table.clone(),
        n: 7,
        hold_ms: 0,
        fail: false,
    };
    let mut tx = database.pool().begin().await.unwrap();
    let id = outbox::Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, outbox_resend, args)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A relay that published the row and is killed before its delete commits:
    // its DELETE sleeps 2 s in a trigger, long enough to kill it there, and
    // PostgreSQL rolls the delete back when it finds the client gone.
    let schema = database.schema().to_string();
    for statement in [
        format!(
            "CREATE FUNCTION {schema}.slow_delete() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        ),
        format!(
            "CREATE TRIGGER slow_delete BEFORE DELETE ON {schema}.outbox \
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}.slow_delete()"
        ),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(database.pool())
            .await
            .unwrap();
    }
    let mut relay = tokio::process::Command::new(WORKER)
        .arg("relay")
        .env("AMQP_URL", amqp_url())
        .env("DATABASE_URL", database_url())
        .env("EDA_DB_SCHEMA", &schema)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the relay");
    let deleting = || async {
        let sleeping: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DELETE FROM \"eda_test_outbox_resend\".outbox%' AND wait_event = 'PgSleep'",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        sleeping > 0
    };
    wait_until("the relay published and is deleting", WAIT, || async {
        broker.ready(OUTBOX_RESEND_QUEUE).await == 1 && deleting().await
    })
    .await;
    relay.kill().await.expect("kill the relay");
    wait_until("the killed relay's delete is over", WAIT, || async {
        !deleting().await
    })
    .await;
    assert_eq!(pending(&database).await, 1, "the delete was rolled back");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TRIGGER slow_delete ON {schema}.outbox"
    )))
    .execute(database.pool())
    .await
    .unwrap();

    // The worker's own relay sends the row again.
    let worker = RunningWorker::start(
        &broker,
        OUTBOX_RESEND_QUEUE,
        worker_config().database(database.clone()),
    )
    .await;
    wait_until(
        "the row is re-sent and both copies are acked",
        WAIT,
        || async { pending(&database).await == 0 && broker.ready(OUTBOX_RESEND_QUEUE).await == 0 },
    )
    .await;
    let id = id.to_string();
    wait_until("the inbox has the message", WAIT, || async {
        let statement = format!(
            "SELECT count(*) FROM {}.inbox WHERE message_id = $1",
            database.schema()
        );
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(statement))
            .bind(&id)
            .fetch_one(database.pool())
            .await
            .unwrap();
        rows == 1
    })
    .await;
    worker.stop().await.unwrap();
    let effects: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE message_id = $1"
    )))
    .bind(&id)
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(effects, 1, "the effect happened once");
    let ran = runs(OUTBOX_RESEND_QUEUE)
        .iter()
        .filter(|run| run.message_id == id)
        .count();
    assert_eq!(ran, 1, "the handler ran once");
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_RESEND_QUEUE).await;
}

#[tokio::test]
async fn worker_outbox_status_shows_pending_rows() {
    let database = migrated("eda_test_outbox_status").await;
    let mut tx = database.pool().begin().await.unwrap();
    outbox::Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, outbox_target, 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let output = tokio::process::Command::new(WORKER)
        .args(["outbox", "status"])
        .env("DATABASE_URL", database_url())
        .env("EDA_DB_SCHEMA", "eda_test_outbox_status")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("pending rows: 1"), "{stdout}");
    assert!(stdout.contains("failing rows: none"), "{stdout}");
    drop_schema(&database).await;
    database.close().await;
}

#[tokio::test]
async fn a_row_that_cannot_be_published_is_counted_and_retried_later_not_in_a_loop() {
    let database = migrated("eda_test_outbox_failing").await;
    let table = format!("{}.outbox", database.schema());
    // A row for an exchange that does not exist: the broker refuses the publish.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (message_id, exchange, routing_key, job, body) \
         VALUES (gen_random_uuid(), 'eda-test.no-such-exchange', 'x', 'outbox_target', '1')"
    )))
    .execute(database.pool())
    .await
    .unwrap();
    let relay = start_relay(&database);
    wait_until("the failure is recorded", WAIT, || async {
        !outbox::status(&database).await.unwrap().failing.is_empty()
    })
    .await;
    let status = outbox::status(&database).await.unwrap();
    // Backed off: the next try is about 2 s away, not the next pass.
    let next_in: f64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM {table}"
    )))
    .fetch_one(database.pool())
    .await
    .unwrap();
    stop_relay(relay).await;
    assert!(next_in > 1.0, "next try in {next_in} s");
    assert_eq!(status.pending, 1, "the row stays");
    let failing = &status.failing[0];
    assert_eq!(failing.attempts, 1);
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("eda-test.no-such-exchange") || error.contains("NOT_FOUND"),
        "{error}"
    );

    let output = tokio::process::Command::new(WORKER)
        .args(["outbox", "status"])
        .env("DATABASE_URL", database_url())
        .env("EDA_DB_SCHEMA", "eda_test_outbox_failing")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("pending rows: 1"), "{stdout}");
    assert!(
        stdout.contains("ATTEMPTS"),
        "the failing row is listed: {stdout}"
    );
    drop_schema(&database).await;
    database.close().await;
}

/// Commits one outbox row for `job` with `args`.
async fn commit_row<J: eda_worker::Job>(database: &Database, job: J, args: J::Args) {
    let mut tx = database.pool().begin().await.unwrap();
    outbox::Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, job, args)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_queue_deleted_under_the_relay_is_declared_again() {
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_REDECLARE_QUEUE).await;
    broker.reset(OUTBOX_REDECLARE_OTHER_QUEUE).await;
    let database = migrated("eda_test_outbox_redeclare").await;
    let relay = start_relay(&database);
    commit_row(&database, outbox_redeclare, 1).await;
    wait_until("the first row is sent", WAIT, || async {
        broker.ready(OUTBOX_REDECLARE_QUEUE).await == 1
    })
    .await;
    broker.delete_queue(OUTBOX_REDECLARE_QUEUE).await;
    // In one batch: rows for a queue that exists and one for the deleted
    // queue. That one is returned unroutable, then declared again and sent
    // on the next try; the others go at once, uncharged.
    let outbox = outbox::Outbox::in_schema(database.schema().clone());
    let mut tx = database.pool().begin().await.unwrap();
    outbox
        .enqueue(&mut tx, outbox_redeclare_other, 10)
        .await
        .unwrap();
    outbox.enqueue(&mut tx, outbox_redeclare, 2).await.unwrap();
    outbox
        .enqueue(&mut tx, outbox_redeclare_other, 11)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_until("the rows are sent", WAIT, || async {
        broker.ready(OUTBOX_REDECLARE_QUEUE).await == 1
            && broker.ready(OUTBOX_REDECLARE_OTHER_QUEUE).await == 2
            && pending(&database).await == 0
    })
    .await;
    stop_relay(relay).await;
    // A return credited to the wrong row would have lost row 2 (deleted as
    // sent) and sent another row twice.
    assert_eq!(broker.ready(OUTBOX_REDECLARE_OTHER_QUEUE).await, 2);
    assert_eq!(broker.ready(OUTBOX_REDECLARE_QUEUE).await, 1);
    let message = broker.get(OUTBOX_REDECLARE_QUEUE).await.expect("a message");
    assert_eq!(message.delivery.data, b"2");
    broker.reset(OUTBOX_REDECLARE_OTHER_QUEUE).await;
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_REDECLARE_QUEUE).await;
}

#[tokio::test]
async fn a_schema_named_like_a_keyword_works_and_its_notifications_wake_the_relay() {
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_KEYWORD_SCHEMA_QUEUE).await;
    let database = migrated("user").await;
    database.migrate().await.unwrap();
    // Polling only every minute: the row must be sent on its NOTIFY.
    let token = CancellationToken::new();
    let relay = Relay::new(database.clone(), amqp_url()).poll_interval(Duration::from_secs(60));
    let relay = (token.clone(), tokio::spawn(relay.run(token)));
    // Let the relay's first (empty) pass finish, so that the row is sent on
    // its notification and not by that pass.
    wait_until("the relay listens", WAIT, || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"user_outbox\"%'",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        listening > 0
    })
    .await;
    commit_row(&database, outbox_keyword_schema, 3).await;
    wait_until("the row is sent", Duration::from_secs(20), || async {
        broker.ready(OUTBOX_KEYWORD_SCHEMA_QUEUE).await == 1 && pending(&database).await == 0
    })
    .await;
    stop_relay(relay).await;
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_KEYWORD_SCHEMA_QUEUE).await;
}

#[tokio::test]
async fn a_scheduled_row_for_a_named_exchange_goes_to_that_exchange_with_its_due_time() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let broker = Broker::connect().await;
    broker.reset(OUTBOX_EXCHANGE_QUEUE).await;
    let channel = broker.channel().await;
    channel
        .queue_declare(
            OUTBOX_EXCHANGE_QUEUE.into(),
            QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            OUTBOX_EXCHANGE_QUEUE.into(),
            "amq.direct".into(),
            OUTBOX_EXCHANGE_QUEUE.into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let database = migrated("eda_test_outbox_exchange").await;
    // Due in an hour: the consumer holds it back; the relay sends it now.
    let due = eda_worker_tests::now_millis() + 3_600_000;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.outbox (message_id, exchange, routing_key, job, eta_ms, body) \
         VALUES (gen_random_uuid(), 'amq.direct', $1, 'outbox_target', $2, '1')",
        database.schema()
    )))
    .bind(OUTBOX_EXCHANGE_QUEUE)
    .bind(i64::try_from(due).unwrap())
    .execute(database.pool())
    .await
    .unwrap();
    let relay = start_relay(&database);
    wait_until("the row is sent to the exchange", WAIT, || async {
        broker.ready(OUTBOX_EXCHANGE_QUEUE).await == 1 && pending(&database).await == 0
    })
    .await;
    stop_relay(relay).await;
    let message = broker.get(OUTBOX_EXCHANGE_QUEUE).await.expect("a message");
    assert_eq!(
        eda_worker::wire::header_u64(&message.delivery.properties, eda_worker::wire::HEADER_ETA),
        Some(due)
    );
    drop_schema(&database).await;
    database.close().await;
    broker.cleanup(OUTBOX_EXCHANGE_QUEUE).await;
}
