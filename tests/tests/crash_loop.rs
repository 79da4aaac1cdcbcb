//! A message that kills the worker process every time it runs, under a
//! supervisor that restarts the worker whenever it dies (as systemd or
//! Kubernetes would): its starts are counted in the database, and once it
//! ended the worker 5 times it is dead-lettered instead of run. The other
//! jobs, prefetched beside it, all run, their effects once.

use eda_worker::Job;
use eda_worker_tests::broker::error_header;
use eda_worker_tests::database::{count, effects_table, execute};
use eda_worker_tests::jobs::crash_loop::{MaybeAbort, crash_loop_classic, crash_loop_quorum};
use eda_worker_tests::jobs::inbox::DbWrite;
use eda_worker_tests::process::database_env;
use eda_worker_tests::{Scene, WAIT, worker_command};

const JOBS: u32 = 50;
const POISON: u32 = 2;
/// `--max-starts` (the default): five starts that ended the worker, and
/// the sixth delivery dead-letters it.
const MAX_STARTS: u32 = 5;

async fn crash_loop<J: Job<Args = MaybeAbort>>(job: J, schema: &str) {
    let scene = Scene::of(job).database(schema).workers(0).start().await;
    let database = scene.database().clone();
    let table = effects_table(&database).await;
    let queue = J::QUEUE;
    let mut poison_id = String::new();
    for n in 0..JOBS {
        let args = MaybeAbort {
            write: DbWrite::new(&table, n),
            abort: n == POISON,
        };
        let id = scene.enqueue(J::default(), args).await;
        if n == POISON {
            poison_id = id;
        }
    }
    let distinct_messages = format!("SELECT count(DISTINCT message_id) FROM {table}");
    let effects = || count(&database, &distinct_messages);
    let done = || async {
        effects().await == i64::from(JOBS - 1) && scene.dead_letters_ready().await == 1
    };

    // The supervisor: start a worker whenever the last one died.
    let mut starts = 0;
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {starts} worker starts: {} effects, {} dead letters",
            effects().await,
            scene.dead_letters_ready().await
        );
        assert!(
            starts <= MAX_STARTS,
            "the worker was started {starts} times and the poison message is not dead-lettered yet"
        );
        let mut worker =
            worker_command!("run", "--queues", queue, "--concurrency", "4", "--no-relay")
                .envs(database_env(&database))
                .spawn()
                .expect("spawn test-worker");
        starts += 1;
        loop {
            tokio::select! {
                exited = worker.wait() => {
                    let status = exited.expect("wait for the worker");
                    assert!(!status.success(), "the worker died: {status}");
                    break;
                }
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    if done().await {
                        // Stopped gracefully, so that its last acks go out: a
                        // kill would hand back a job whose effects committed
                        // (for the next worker's inbox to drop) and leave it
                        // ready in the queue.
                        let pid = worker.id().expect("the worker runs").to_string();
                        let sent = std::process::Command::new("kill")
                            .args(["-TERM", &pid])
                            .status()
                            .expect("kill -TERM");
                        assert!(sent.success(), "kill -TERM {pid}");
                        let status = tokio::time::timeout(WAIT, worker.wait())
                            .await
                            .expect("the last worker stops in time")
                            .expect("wait for the last worker");
                        assert!(status.success(), "the last worker stopped cleanly: {status}");
                        break;
                    }
                }
            }
        }
    }
    // Five starts died under it; the sixth dead-lettered it.
    assert!(starts <= MAX_STARTS + 1, "{starts} worker starts");
    let letters = scene.take_dead_letters().await;
    assert_eq!(eda_worker_tests::broker::message_id(&letters[0]), poison_id);
    let error = error_header(&letters[0]);
    assert!(
        error.contains("the job was started 5 times without finishing"),
        "{error}"
    );
    // Every other job ran, its effect once.
    assert_eq!(effects().await, i64::from(JOBS - 1));
    let rows = count(&database, &format!("SELECT count(*) FROM {table}")).await;
    assert_eq!(rows, i64::from(JOBS - 1));
    // The ledger forgot every message that finished.
    let ledger = count(
        &database,
        &format!("SELECT count(*) FROM {}.job_starts", database.schema()),
    )
    .await;
    assert_eq!(ledger, 0);
    assert_eq!(scene.ready().await, 0);
    execute(&database, format!("DROP TABLE {table}")).await;
    scene.finish().await;
}

#[tokio::test]
async fn a_message_that_keeps_killing_the_worker_is_dead_lettered_on_a_classic_queue() {
    crash_loop(crash_loop_classic, "eda_test_crash_loop_classic").await;
}

#[tokio::test]
async fn a_message_that_keeps_killing_the_worker_is_dead_lettered_on_a_quorum_queue() {
    crash_loop(crash_loop_quorum, "eda_test_crash_loop_quorum").await;
}
