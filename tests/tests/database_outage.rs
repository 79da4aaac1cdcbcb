//! A database outage is not the jobs' fault: PostgreSQL (a server of the
//! test's own) is stopped for 60 s while dedup'd jobs flow. The queues that
//! use it stop taking jobs and hand back what they prefetched, the queue
//! that does not runs on, nothing is dead-lettered, every job's effects
//! commit exactly once, and the worker never exits.
//!
//! Serial (`#[ignore]`, run by `.ci/run` after the parallel suite): it lasts
//! over a minute.

use std::time::Duration;

use eda_worker::postgres::{Database, Schema};
use eda_worker::{Job, Worker};
use eda_worker_tests::database::{count, effects_table, execute};
use eda_worker_tests::jobs::database_outage::{outage_dedup, outage_free, outage_lazy};
use eda_worker_tests::jobs::inbox::DbWrite;
use eda_worker_tests::jobs::runs;
use eda_worker_tests::postgres_node::PostgresNode;
use eda_worker_tests::{Scene, WAIT, wait_until, worker_config};
use tokio_util::sync::CancellationToken;

const OUTAGE: Duration = Duration::from_secs(60);
const DEDUP_JOBS: u32 = 500;
const LAZY_JOBS: u32 = 100;

#[tokio::test]
#[ignore = "serial: stops a PostgreSQL server for 60 s; .ci/run runs it after the parallel suite"]
async fn a_database_outage_dead_letters_nothing_and_every_effect_commits_once() {
    let server = PostgresNode::start("outage");
    let schema = Schema::new("eda_test_db_outage").unwrap();
    let database = Database::connect(&server.url(), schema)
        .await
        .expect("the test's own server");
    database.migrate().await.unwrap();
    let table = effects_table(&database).await;
    let scene = Scene::of(outage_dedup)
        .also(outage_lazy)
        .also(outage_free)
        .workers(0)
        .start()
        .await;
    let queues = [
        <outage_dedup as Job>::QUEUE,
        <outage_lazy as Job>::QUEUE,
        <outage_free as Job>::QUEUE,
    ];
    let config = worker_config()
        .queues(queues)
        .database(database.clone())
        .relay(false)
        .concurrency(8);
    let token = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(config).expect("config").run(token.clone()));
    let effects = |table: &str| format!("SELECT count(*) FROM {table}");

    // Half the jobs before the outage, half during it.
    for n in 0..DEDUP_JOBS / 2 {
        scene.enqueue(outage_dedup, DbWrite::new(&table, n)).await;
    }
    for n in 0..LAZY_JOBS / 2 {
        scene
            .enqueue(outage_lazy, DbWrite::new(&table, 10_000 + n))
            .await;
    }
    wait_until("some effects committed", WAIT, || async {
        count(&database, &effects(&table)).await >= 50
    })
    .await;
    server.stop();
    let stopped = tokio::time::Instant::now();
    for n in DEDUP_JOBS / 2..DEDUP_JOBS {
        scene.enqueue(outage_dedup, DbWrite::new(&table, n)).await;
    }
    for n in LAZY_JOBS / 2..LAZY_JOBS {
        scene
            .enqueue(outage_lazy, DbWrite::new(&table, 10_000 + n))
            .await;
    }
    // A queue that needs no database runs on.
    for n in 0..20 {
        scene.enqueue(outage_free, n).await;
    }
    wait_until(
        "the jobs without a database ran during the outage",
        WAIT,
        || async { runs(queues[2]).len() >= 20 },
    )
    .await;
    // The queues that use the database stopped taking jobs.
    wait_until("no consumer on the database's queues", WAIT, || async {
        scene.broker.consumers(queues[0]).await == 0 && scene.broker.consumers(queues[1]).await == 0
    })
    .await;
    assert_eq!(scene.broker.consumers(queues[2]).await, 1);
    // The outage lasts its full length (this sleep is the scenario, not a wait).
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    assert!(!worker.is_finished(), "the worker did not exit");
    server.start_again();

    let dedup_rows = format!("SELECT count(*) FROM {table} WHERE n < 10000");
    let lazy_messages = format!("SELECT count(DISTINCT message_id) FROM {table} WHERE n >= 10000");
    wait_until("every job's effect committed", WAIT * 4, || async {
        count(&database, &dedup_rows).await >= i64::from(DEDUP_JOBS)
            && count(&database, &lazy_messages).await >= i64::from(LAZY_JOBS)
    })
    .await;
    for queue in queues {
        assert_eq!(
            scene.broker.ready(&format!("{queue}.dlq")).await,
            0,
            "{queue}.dlq is empty"
        );
    }
    // Exactly once for the dedup'd jobs: one row per message, one inbox row
    // each. (A job that does not dedup is at least once: a commit whose
    // answer the outage cut off may run again.)
    assert_eq!(count(&database, &dedup_rows).await, i64::from(DEDUP_JOBS));
    assert_eq!(
        count(
            &database,
            &format!("SELECT count(DISTINCT message_id) FROM {table} WHERE n < 10000")
        )
        .await,
        i64::from(DEDUP_JOBS)
    );
    assert_eq!(
        count(
            &database,
            &format!("SELECT count(*) FROM {}.inbox", database.schema())
        )
        .await,
        i64::from(DEDUP_JOBS)
    );
    assert!(!worker.is_finished(), "the worker did not exit");
    token.cancel();
    worker
        .await
        .expect("worker task")
        .expect("the worker stops without error");
    scene.finish().await;
    execute(
        &database,
        format!("DROP SCHEMA \"{}\" CASCADE", database.schema()),
    )
    .await;
    database.close().await;
}
