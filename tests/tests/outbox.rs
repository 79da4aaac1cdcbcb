//! The transactional outbox and its relay: a rolled-back row is never sent, a
//! committed one is sent with the row's message id, two relays send each row
//! once, and a re-send after a relay crash is dropped by the consumer's inbox.

use std::collections::HashSet;
use std::time::Duration;

use eda_worker::Job;
use eda_worker::outbox::{self, Outbox, Relay};
use eda_worker::postgres::Database;
use eda_worker::wire::{HEADER_ETA, header_u64};
use eda_worker_tests::broker::message_id;
use eda_worker_tests::database::{
    effects_table, execute, inbox_rows, migrated_database, remove_database, rows_for_message,
    sleeping_in, slow_trigger_function,
};
use eda_worker_tests::jobs::inbox::DbWrite;
use eda_worker_tests::jobs::outbox::{
    outbox_beside_missing_exchange, outbox_keyword_schema, outbox_redeclare,
    outbox_redeclare_other, outbox_resend, outbox_target, outbox_two_relays,
};
use eda_worker_tests::jobs::runs_of;
use eda_worker_tests::outbox::{RunningRelay, commit_row, pending};
use eda_worker_tests::process::database_env;
use eda_worker_tests::{Scene, WAIT, amqp_url, now_millis, wait_until, worker_command};
use sqlx::AssertSqlSafe;

/// A scene on `job`'s queue with a migrated schema and no worker: the
/// outbox tests' relays feed the queue, which nothing consumes.
async fn outbox_scene<J: Job>(job: J, schema: &str) -> Scene {
    Scene::of(job).database(schema).workers(0).start().await
}

/// The output of `worker outbox status` for `database`'s schema.
async fn status_command(database: &Database) -> String {
    let output = worker_command!("outbox", "status")
        .envs(database_env(database))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn a_rolled_back_row_is_never_sent_and_a_committed_one_is_sent_with_its_id() {
    let scene = outbox_scene(outbox_target, "eda_test_outbox_commit").await;
    let database = scene.database();
    let relay = RunningRelay::start(database);

    let mut tx = database.pool().begin().await.unwrap();
    Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, outbox_target, 1)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let id = commit_row(database, outbox_target, 2).await;

    wait_until("the committed row is sent and deleted", WAIT, || async {
        scene.ready().await == 1 && pending(database).await == 0
    })
    .await;
    relay.stop().await;
    let message = scene.broker.get(scene.queue()).await.expect("one message");
    assert_eq!(message.delivery.data, b"2");
    assert_eq!(
        message_id(&message),
        id.to_string(),
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
        scene.broker.get(scene.queue()).await.is_none(),
        "the rolled-back row was never sent"
    );
    scene.finish().await;
}

#[tokio::test]
async fn two_relays_send_each_of_ten_thousand_rows_once() {
    const ROWS: u32 = 10_000;
    let scene = outbox_scene(outbox_two_relays, "eda_test_outbox_two_relays").await;
    let database = scene.database();
    let outbox = Outbox::in_schema(database.schema().clone());
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

    let first = RunningRelay::start(database);
    let second = RunningRelay::start(database);
    wait_until(
        "every row is sent and deleted",
        Duration::from_secs(120),
        || async { pending(database).await == 0 },
    )
    .await;
    first.stop().await;
    second.stop().await;
    // Rows are deleted only after their publish was confirmed: all are on the queue.
    assert_eq!(scene.ready().await, ROWS, "no row sent twice");
    let sent: HashSet<String> = scene
        .broker
        .drain(scene.queue())
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(sent, ids, "each row's id, once");
    scene.finish().await;
}

#[tokio::test]
async fn a_row_re_sent_after_a_relay_crash_is_dropped_by_the_consumers_inbox() {
    let mut scene = outbox_scene(outbox_resend, "eda_test_outbox_resend").await;
    let database = scene.database().clone();
    let table = effects_table(&database).await;
    let id = commit_row(&database, outbox_resend, DbWrite::new(&table, 7)).await;
    // A relay that published the row and is killed before its delete commits:
    // its DELETE sleeps 2 s in a trigger, long enough to kill it there, and
    // PostgreSQL rolls the delete back when it finds the client gone.
    let schema = database.schema().to_string();
    let slow_delete = slow_trigger_function(&database, "slow_delete").await;
    execute(
        &database,
        format!(
            "CREATE TRIGGER slow_delete BEFORE DELETE ON {schema}.outbox \
             FOR EACH STATEMENT EXECUTE FUNCTION {slow_delete}()"
        ),
    )
    .await;
    let mut relay = worker_command!("relay")
        .envs(database_env(&database))
        .spawn()
        .expect("spawn the relay");
    let deleting_like = format!("DELETE FROM \"{schema}\".outbox%");
    wait_until("the relay published and is deleting", WAIT, || async {
        scene.ready().await == 1 && sleeping_in(&database, &deleting_like).await
    })
    .await;
    relay.kill().await.expect("kill the relay");
    wait_until("the killed relay's delete is over", WAIT, || async {
        !sleeping_in(&database, &deleting_like).await
    })
    .await;
    assert_eq!(pending(&database).await, 1, "the delete was rolled back");
    execute(
        &database,
        format!("DROP TRIGGER slow_delete ON {schema}.outbox"),
    )
    .await;

    // The worker's own relay sends the row again.
    scene.start_worker().await;
    wait_until(
        "the row is re-sent and both copies are acked",
        WAIT,
        || async { pending(&database).await == 0 && scene.ready().await == 0 },
    )
    .await;
    let id = id.to_string();
    wait_until("the inbox has the message", WAIT, || async {
        inbox_rows(&database, &id).await == 1
    })
    .await;
    scene.stop_workers().await;
    assert_eq!(
        rows_for_message(&database, &table, &id).await,
        1,
        "the effect happened once"
    );
    assert_eq!(runs_of(scene.queue(), &id).len(), 1, "the handler ran once");
    scene.finish().await;
}

#[tokio::test]
async fn worker_outbox_status_shows_pending_rows() {
    let database = migrated_database("eda_test_outbox_status").await;
    commit_row(&database, outbox_target, 1).await;
    let stdout = status_command(&database).await;
    assert!(stdout.contains("pending rows: 1"), "{stdout}");
    assert!(stdout.contains("failing rows: none"), "{stdout}");
    remove_database(database).await;
}

/// Commits an outbox row of `job` for `exchange`, which does not exist.
async fn commit_row_for_missing_exchange(database: &Database, exchange: &str, job: &str) {
    let table = format!("{}.outbox", database.schema());
    execute(
        database,
        format!(
            "INSERT INTO {table} (message_id, exchange, routing_key, job, body) \
             VALUES (gen_random_uuid(), '{exchange}', 'x', '{job}', '1')"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_row_that_cannot_be_published_is_counted_and_retried_later_not_in_a_loop() {
    let database = migrated_database("eda_test_outbox_failing").await;
    let table = format!("{}.outbox", database.schema());
    // A row for an exchange that does not exist: the broker refuses the publish.
    commit_row_for_missing_exchange(&database, "eda-test.no-such-exchange", "outbox_target").await;
    let relay = RunningRelay::start(&database);
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
    relay.stop().await;
    assert!(next_in > 1.0, "next try in {next_in} s");
    assert_eq!(status.pending, 1, "the row stays");
    let failing = &status.failing[0];
    assert_eq!(failing.attempts, 1);
    let error = failing.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("eda-test.no-such-exchange") || error.contains("NOT_FOUND"),
        "{error}"
    );

    let stdout = status_command(&database).await;
    assert!(stdout.contains("pending rows: 1"), "{stdout}");
    assert!(
        stdout.contains("ATTEMPTS"),
        "the failing row is listed: {stdout}"
    );
    remove_database(database).await;
}

#[tokio::test]
async fn a_row_for_a_missing_exchange_does_not_fail_the_rows_in_flight_beside_it() {
    let database = migrated_database("eda_test_outbox_beside_missing").await;
    let queue = <outbox_beside_missing_exchange as Job>::QUEUE;
    let broker = eda_worker_tests::broker::Broker::connect().await;
    broker.reset(queue).await;
    // The broker closes the channel of a publish to a missing exchange: it
    // goes alone, and the rows for the default exchange around it are sent.
    for n in 0..10 {
        commit_row(&database, outbox_beside_missing_exchange, n).await;
    }
    commit_row_for_missing_exchange(
        &database,
        "eda-test.no-such-exchange-beside",
        "outbox_beside_missing_exchange",
    )
    .await;
    for n in 10..20 {
        commit_row(&database, outbox_beside_missing_exchange, n).await;
    }
    let relay = RunningRelay::start(&database);
    wait_until(
        "the good rows are sent and the bad one is recorded",
        WAIT,
        || async {
            let status = outbox::status(&database).await.unwrap();
            status.pending == 1 && !status.failing.is_empty()
        },
    )
    .await;
    relay.stop().await;
    assert_eq!(
        broker.ready(queue).await,
        20,
        "every good row reached its queue"
    );
    let status = outbox::status(&database).await.unwrap();
    assert_eq!(status.failing.len(), 1);
    assert_eq!(status.failing[0].attempts, 1, "only the bad row failed");
    broker.delete_queue(queue).await;
    broker.close().await;
    remove_database(database).await;
}

#[tokio::test]
async fn a_queue_deleted_under_the_relay_is_declared_again() {
    let scene = Scene::of(outbox_redeclare)
        .also(outbox_redeclare_other)
        .database("eda_test_outbox_redeclare")
        .workers(0)
        .start()
        .await;
    let (queue, other) = (scene.queue(), <outbox_redeclare_other as Job>::QUEUE);
    let database = scene.database();
    let relay = RunningRelay::start(database);
    commit_row(database, outbox_redeclare, 1).await;
    wait_until("the first row is sent", WAIT, || async {
        scene.ready().await == 1
    })
    .await;
    scene.broker.delete_queue(queue).await;
    // In one batch: rows for a queue that exists and one for the deleted
    // queue. That one is returned unroutable, then declared again and sent
    // on the next try; the others go at once, uncharged.
    let outbox = Outbox::in_schema(database.schema().clone());
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
        scene.ready().await == 1
            && scene.broker.ready(other).await == 2
            && pending(database).await == 0
    })
    .await;
    relay.stop().await;
    // A return credited to the wrong row would have lost row 2 (deleted as
    // sent) and sent another row twice.
    assert_eq!(scene.broker.ready(other).await, 2);
    assert_eq!(scene.ready().await, 1);
    let message = scene.broker.get(queue).await.expect("a message");
    assert_eq!(message.delivery.data, b"2");
    scene.finish().await;
}

#[tokio::test]
async fn a_schema_named_like_a_keyword_works_and_its_notifications_wake_the_relay() {
    let scene = outbox_scene(outbox_keyword_schema, "user").await;
    let database = scene.database();
    database.migrate().await.unwrap();
    // Polling only every minute: the row must be sent on its NOTIFY.
    let relay = RunningRelay::start_with(
        Relay::new(database.clone(), amqp_url()).poll_interval(Duration::from_secs(60)),
    );
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
    commit_row(database, outbox_keyword_schema, 3).await;
    wait_until("the row is sent", Duration::from_secs(20), || async {
        scene.ready().await == 1 && pending(database).await == 0
    })
    .await;
    relay.stop().await;
    scene.finish().await;
}

#[tokio::test]
async fn a_scheduled_row_for_a_named_exchange_goes_to_that_exchange_with_its_due_time() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    // Bound to `amq.direct`; no job consumes it.
    let scene = Scene::on_queue("eda-test.outbox-exchange")
        .database("eda_test_outbox_exchange")
        .workers(0)
        .start()
        .await;
    let queue = scene.queue();
    let channel = scene.broker.channel().await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            "amq.direct".into(),
            queue.into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let database = scene.database();
    // Due in an hour: the consumer holds it back; the relay sends it now.
    let due = now_millis() + 3_600_000;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {}.outbox (message_id, exchange, routing_key, job, eta_ms, body) \
         VALUES (gen_random_uuid(), 'amq.direct', $1, 'outbox_target', $2, '1')",
        database.schema()
    )))
    .bind(queue)
    .bind(i64::try_from(due).unwrap())
    .execute(database.pool())
    .await
    .unwrap();
    let relay = RunningRelay::start(database);
    wait_until("the row is sent to the exchange", WAIT, || async {
        scene.ready().await == 1 && pending(database).await == 0
    })
    .await;
    relay.stop().await;
    let message = scene.broker.get(queue).await.expect("a message");
    assert_eq!(
        header_u64(&message.delivery.properties, HEADER_ETA),
        Some(due)
    );
    scene.finish().await;
}
