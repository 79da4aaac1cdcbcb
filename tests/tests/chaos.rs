//! Chaos: 20,000 dedup'd jobs each write a row and enqueue a follow-up
//! through the outbox, which writes a row too, while, in this order, a
//! worker is killed (`kill -9`) twice, the broker closes every connection,
//! RabbitMQ restarts, PostgreSQL restarts, and the separate relay is
//! killed. A supervisor starts whatever died again. At the end there are
//! 20,000 rows of each, none twice, and every queue, DLQ and the outbox is
//! empty.
//!
//! Its own step of `.ci/run` (`#[ignore]`, skipped by the serial step):
//! on a RabbitMQ node and a PostgreSQL server of its own, about 2 minutes.

use std::time::{Duration, Instant};

use eda_worker::postgres::{Database, Schema};
use eda_worker::{Client, Job};
use eda_worker_tests::database::{effects_table, execute};
use eda_worker_tests::jobs::chaos::{ChaosArgs, chaos_follow_up, chaos_job};
use eda_worker_tests::jobs::inbox::DbWrite;
use eda_worker_tests::node::{Node, NodeSpec};
use eda_worker_tests::postgres_node::PostgresNode;
use eda_worker_tests::process::WorkerProcess;
use eda_worker_tests::{WAIT, wait_until, worker_command};
use futures_util::StreamExt;
use sqlx::AssertSqlSafe;

const JOBS: u32 = 20_000;
const WORKERS: usize = 2;

/// Where the processes connect.
struct Settings {
    url: String,
    database_url: String,
    schema: String,
}

/// The processes the supervisor keeps running.
struct Fleet {
    settings: Settings,
    workers: Vec<WorkerProcess>,
    relay: WorkerProcess,
    restarts: usize,
}

impl Settings {
    fn worker(&self) -> WorkerProcess {
        let mut command = worker_command!("run");
        command
            .env("AMQP_URL", &self.url)
            .env("DATABASE_URL", &self.database_url)
            .env("EDA_DB_SCHEMA", &self.schema)
            .args([
                "--queues",
                &format!(
                    "{},{}",
                    <chaos_job as Job>::QUEUE,
                    <chaos_follow_up as Job>::QUEUE
                ),
                "--no-relay",
                "--concurrency",
                "16",
                "--shutdown-timeout",
                "10s",
            ]);
        WorkerProcess::start(command, "warn")
    }

    fn relay(&self) -> WorkerProcess {
        let mut command = worker_command!("relay");
        command
            .env("AMQP_URL", &self.url)
            .env("DATABASE_URL", &self.database_url)
            .env("EDA_DB_SCHEMA", &self.schema);
        WorkerProcess::start(command, "warn")
    }
}

impl Fleet {
    fn start(settings: Settings) -> Self {
        Fleet {
            workers: (0..WORKERS).map(|_| settings.worker()).collect(),
            relay: settings.relay(),
            settings,
            restarts: 0,
        }
    }

    /// Starts again whatever died.
    fn supervise(&mut self) {
        for index in 0..self.workers.len() {
            if !self.workers[index].is_running() {
                self.workers[index] = self.settings.worker();
                self.restarts += 1;
            }
        }
        if !self.relay.is_running() {
            self.relay = self.settings.relay();
            self.restarts += 1;
        }
    }
}

async fn count(database: &Database, statement: &str) -> i64 {
    // The server restarts once: a failed count is taken for none yet.
    sqlx::query_scalar(AssertSqlSafe(statement.to_owned()))
        .fetch_one(database.pool())
        .await
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: its own step of .ci/run"]
async fn chaos_twenty_thousand_jobs_and_their_follow_ups_survive_kills_and_restarts_exactly_once() {
    let started = Instant::now();
    let node = Node::start("chaos", NodeSpec::default());
    let postgres = PostgresNode::start("chaos");
    let schema = "eda_test_chaos";
    let database = Database::connect(&postgres.url(), Schema::new(schema).unwrap())
        .await
        .unwrap();
    database.migrate().await.unwrap();
    let rows = effects_table(&database).await;
    let follow_up_rows = format!("{}.follow_up_effects", database.schema());
    execute(
        &database,
        format!("CREATE TABLE {follow_up_rows} (message_id text NOT NULL, n bigint NOT NULL)"),
    )
    .await;

    let client = Client::connect(&node.amqp_url()).await.unwrap();
    futures_util::stream::iter(0..JOBS)
        .map(|n| {
            let args = ChaosArgs {
                write: DbWrite::new(&rows, n),
                follow_up_table: follow_up_rows.clone(),
            };
            client.enqueue(chaos_job, args)
        })
        .buffer_unordered(64)
        .for_each(|enqueued| async move {
            enqueued.expect("confirmed");
        })
        .await;
    client.close().await.unwrap();
    let enqueued = started.elapsed();

    let mut fleet = Fleet::start(Settings {
        url: node.amqp_url(),
        database_url: postgres.url(),
        schema: schema.to_owned(),
    });

    let count_rows = format!("SELECT count(*) FROM {rows}");
    let count_follow_ups = format!("SELECT count(*) FROM {follow_up_rows}");
    let progress = |share: u32| i64::from(JOBS / 100 * share);
    let faults: [(u32, &str); 6] = [
        (10, "kill -9 a worker"),
        (20, "kill -9 a worker"),
        (30, "close every connection"),
        (40, "restart RabbitMQ"),
        (55, "restart PostgreSQL"),
        (70, "kill -9 the relay"),
    ];
    let deadline = Instant::now() + WAIT * 8;
    let mut figures = Vec::new();
    for (index, (share, fault)) in faults.iter().enumerate() {
        loop {
            fleet.supervise();
            if count(&database, &count_rows).await >= progress(*share) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress to {share}% before {fault}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at = started.elapsed();
        match index {
            0 | 1 => fleet.workers[index].signal("KILL"),
            2 => {
                node.ctl(&["close_all_connections", "chaos test"]);
            }
            3 => {
                node.ctl(&["stop_app"]);
                node.ctl(&["start_app"]);
            }
            4 => {
                postgres.stop();
                postgres.start_again();
            }
            _ => fleet.relay.signal("KILL"),
        }
        figures.push(format!("{fault} at {share}% ({at:.1?})"));
    }
    loop {
        fleet.supervise();
        let done = count(&database, &count_rows).await >= i64::from(JOBS)
            && count(&database, &count_follow_ups).await >= i64::from(JOBS);
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: {} rows, {} follow-up rows",
            started.elapsed(),
            count(&database, &count_rows).await,
            count(&database, &count_follow_ups).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_done = started.elapsed();

    // Copies whose acks a fault lost come back, and the inbox acks them.
    let queues = [
        <chaos_job as Job>::QUEUE.to_owned(),
        format!("{}.dlq", <chaos_job as Job>::QUEUE),
        <chaos_follow_up as Job>::QUEUE.to_owned(),
        format!("{}.dlq", <chaos_follow_up as Job>::QUEUE),
    ];
    let queue_depths = || {
        let listed = node.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ]);
        queues
            .iter()
            .map(|queue| {
                listed
                    .lines()
                    .filter_map(|line| line.split_once('\t'))
                    .find(|(name, _)| name == queue)
                    .map_or(-1, |(_, count)| count.trim().parse::<i64>().unwrap_or(-1))
            })
            .collect::<Vec<i64>>()
    };
    let pending = format!("SELECT count(*) FROM {}.outbox", database.schema());
    wait_until(
        "every queue, DLQ and the outbox is empty",
        WAIT * 2,
        || async { fleet_is_quiet(&queue_depths()) && count(&database, &pending).await == 0 },
    )
    .await;

    for worker in fleet.workers.drain(..) {
        worker.signal("TERM");
        let (status, _) = worker.exit().await;
        assert!(status.success(), "a worker stops cleanly: {status}");
    }
    fleet.relay.signal("TERM");

    // Exactly once: every job's row and its follow-up's row, none twice.
    let distinct = |table: &str| format!("SELECT count(DISTINCT n) FROM {table}");
    assert_eq!(count(&database, &count_rows).await, i64::from(JOBS));
    assert_eq!(count(&database, &distinct(&rows)).await, i64::from(JOBS));
    assert_eq!(count(&database, &count_follow_ups).await, i64::from(JOBS));
    assert_eq!(
        count(&database, &distinct(&follow_up_rows)).await,
        i64::from(JOBS)
    );
    eprintln!(
        "chaos: {JOBS} jobs and {JOBS} follow-ups, exactly once; enqueued in {enqueued:.1?}, all effects after {all_done:.1?}, queues empty after {:.1?}; {} processes started again; faults: {}",
        started.elapsed(),
        fleet.restarts,
        figures.join(", ")
    );
    database.close().await;
}

fn fleet_is_quiet(depths: &[i64]) -> bool {
    depths.iter().all(|depth| *depth == 0)
}
