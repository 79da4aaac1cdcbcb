//! The jobs of the integration tests. Each test has its own queue, so tests
//! run in parallel without seeing each other's messages.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use eda_worker::prelude::*;
use tokio::sync::Semaphore;

/// What a job saw when it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// `ctx.message_id()`.
    pub message_id: String,
    /// `ctx.correlation_id()`.
    pub correlation_id: Option<String>,
    /// `ctx.attempt()`.
    pub attempt: u32,
    /// The arguments, re-serialized.
    pub args: serde_json::Value,
    /// When it ran, ms since the epoch.
    pub at_ms: u64,
}

static RUNS: Mutex<Option<HashMap<&'static str, Vec<Run>>>> = Mutex::new(None);

fn record(ctx: &JobContext, args: &impl Serialize) {
    let run = Run {
        message_id: ctx.message_id().to_owned(),
        correlation_id: ctx.correlation_id().map(str::to_owned),
        attempt: ctx.attempt(),
        args: serde_json::to_value(args).expect("args serialize"),
        at_ms: crate::now_millis(),
    };
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .entry(ctx.queue())
        .or_default()
        .push(run);
}

/// The runs recorded for jobs of `queue`.
pub fn runs(queue: &str) -> Vec<Run> {
    RUNS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|runs| runs.get(queue).cloned())
        .unwrap_or_default()
}

/// Rich arguments, to check that typed args arrive intact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signup {
    /// An integer.
    pub user_id: i64,
    /// A string with non-ASCII text.
    pub email: String,
    /// A nested list.
    pub tags: Vec<String>,
    /// An optional field.
    pub referrer: Option<u32>,
}

/// Queue of the round-trip tests.
pub const ROUNDTRIP_QUEUE: &str = "eda-test.roundtrip";

/// Records its run.
#[job(queue = "eda-test.roundtrip")]
pub async fn roundtrip(ctx: JobContext, args: Signup) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Queue of the confirm tests.
pub const CONFIRMS_QUEUE: &str = "eda-test.confirms";

/// Only ever enqueued, never run.
#[job(queue = "eda-test.confirms")]
pub async fn confirmed(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the dead-letter tests.
pub const DEAD_LETTER_QUEUE: &str = "eda-test.dead-letters";

/// Arguments of the dead-letter tests' jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Numbered {
    /// Which message.
    pub n: u32,
}

/// Records its run.
#[job(queue = "eda-test.dead-letters")]
pub async fn dead_letter_echo(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Always fails with a retryable error.
#[job(queue = "eda-test.dead-letters", retries = 0)]
pub async fn dead_letter_fails(_ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    Err(std::io::Error::other(format!(
        "smtp server said no to {}",
        args.n
    )))?;
    Ok(())
}

/// Always panics.
#[job(queue = "eda-test.dead-letters", retries = 0)]
pub async fn dead_letter_panics(_ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    panic!("handler exploded on {}", args.n);
}

/// Runs past its timeout.
#[job(queue = "eda-test.dead-letters", timeout = "200ms", retries = 0)]
pub async fn dead_letter_sleeps(_ctx: JobContext, _args: Numbered) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

/// Queue of the flow-control tests.
pub const FLOW_QUEUE: &str = "eda-test.flow-control";

/// Released one permit per job by the flow-control test.
pub static FLOW_GATE: Semaphore = Semaphore::const_new(0);
/// Jobs of the flow-control queue running now.
pub static FLOW_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// The most that ever ran at once.
pub static FLOW_MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Jobs that got past the gate.
pub static FLOW_DONE: AtomicUsize = AtomicUsize::new(0);

/// Waits at the gate, tracking how many run at once.
#[job(queue = "eda-test.flow-control")]
pub async fn gated(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    let now = FLOW_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    FLOW_MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
    let permit = FLOW_GATE.acquire().await.map_err(JobError::permanent)?;
    permit.forget();
    FLOW_RUNNING.fetch_sub(1, Ordering::SeqCst);
    FLOW_DONE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Queue of the graceful-shutdown test (run by the `test-worker` binary).
pub const SHUTDOWN_QUEUE: &str = "eda-test.shutdown";
/// Queue of the second-signal test.
pub const INTERRUPT_QUEUE: &str = "eda-test.interrupt";

/// Arguments of the jobs that leave their effect in a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Effect {
    /// Which job.
    pub id: u32,
    /// The file each run appends its id to.
    pub log: String,
    /// How long the job works.
    pub work_ms: u64,
}

fn append_effect(args: &Effect) -> Result<(), JobError> {
    // One write of a short line to an O_APPEND file is atomic, so concurrent
    // jobs (and processes) never interleave their lines.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)?;
    file.write_all(format!("{}\n", args.id).as_bytes())?;
    Ok(())
}

/// Works for `work_ms`, then appends its id to the log.
#[job(queue = "eda-test.shutdown")]
pub async fn slow_effect(_ctx: JobContext, args: Effect) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(args.work_ms)).await;
    append_effect(&args)
}

/// Appends its id when it starts, then works for `work_ms`.
#[job(queue = "eda-test.interrupt")]
pub async fn long_effect(_ctx: JobContext, args: Effect) -> Result<(), JobError> {
    append_effect(&args)?;
    tokio::time::sleep(Duration::from_millis(args.work_ms)).await;
    Ok(())
}

/// Queue of the reconnect test.
pub const RECONNECT_QUEUE: &str = "eda-test.reconnect";

/// Records its run.
#[job(queue = "eda-test.reconnect")]
pub async fn reconnect_echo(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Queue the mismatch test declares with other arguments first.
pub const MISMATCH_QUEUE: &str = "eda-test.mismatch";

/// Never runs: its queue exists with other arguments.
#[job(queue = "eda-test.mismatch")]
pub async fn mismatched(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test that deletes a queue under a running worker.
pub const DELETED_QUEUE: &str = "eda-test.queue-deleted";

/// Records its run.
#[job(queue = "eda-test.queue-deleted")]
pub async fn deleted_queue_echo(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Queue of the test that deletes a dead-letter queue under a running worker.
pub const DLQ_RECOVERY_QUEUE: &str = "eda-test.dlq-recovery";

/// Always fails permanently.
#[job(queue = "eda-test.dlq-recovery")]
pub async fn always_fails(_ctx: JobContext, args: u32) -> Result<(), JobError> {
    Err(JobError::permanent(format!("record {args} does not exist")))
}

/// Queue of the nack test (a policy makes the broker refuse publishes when full).
pub const NACK_QUEUE: &str = "eda-test.nack";

/// Only ever enqueued, never run.
#[job(queue = "eda-test.nack")]
pub async fn refused(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the shutdown-deadline test.
pub const DEADLINE_QUEUE: &str = "eda-test.deadline";

/// Appends its id when it starts, then works for `work_ms`.
#[job(queue = "eda-test.deadline")]
pub async fn deadline_effect(_ctx: JobContext, args: Effect) -> Result<(), JobError> {
    append_effect(&args)?;
    tokio::time::sleep(Duration::from_millis(args.work_ms)).await;
    Ok(())
}

/// Queue that the attribution test deletes under the client.
pub const UNROUTABLE_QUEUE: &str = "eda-test.unroutable";
/// Queue that the attribution test keeps.
pub const ROUTABLE_QUEUE: &str = "eda-test.routable";

/// Only ever enqueued, never run.
#[job(queue = "eda-test.unroutable")]
pub async fn to_deleted_queue(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Only ever enqueued, never run.
#[job(queue = "eda-test.routable")]
pub async fn to_kept_queue(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the client-reconnect test.
pub const CLIENT_RECONNECT_QUEUE: &str = "eda-test.client-reconnect";

/// Only ever enqueued, never run.
#[job(queue = "eda-test.client-reconnect")]
pub async fn after_reconnect(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Fails with a retryable error on attempts before `args`, then records and succeeds.
async fn fail_until(ctx: &JobContext, succeed_on: u32) -> Result<(), JobError> {
    record(ctx, &succeed_on);
    if ctx.attempt() < succeed_on {
        return Err(
            std::io::Error::other(format!("attempt {} failed on purpose", ctx.attempt())).into(),
        );
    }
    Ok(())
}

/// Queue of the retry-schedule test.
pub const RETRY_QUEUE: &str = "eda-test.retries";

/// Fails until attempt `args`, retrying 200 ms, 400 ms, ... apart.
#[job(queue = "eda-test.retries", retries = 3, backoff = "200ms..10s")]
pub async fn flaky(ctx: JobContext, args: u32) -> Result<(), JobError> {
    fail_until(&ctx, args).await
}

/// Queue of the head-of-line test.
pub const HOL_QUEUE: &str = "eda-test.head-of-line";

/// Fails until attempt `args`, retrying after exactly 1 s.
#[job(queue = "eda-test.head-of-line", backoff = "1s..1s")]
pub async fn flaky_each_second(ctx: JobContext, args: u32) -> Result<(), JobError> {
    fail_until(&ctx, args).await
}

/// Queue of the scheduled-job tests.
pub const SCHEDULED_QUEUE: &str = "eda-test.scheduled";

/// Records its run.
#[job(queue = "eda-test.scheduled")]
pub async fn scheduled(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Queue of the spent-retries and permanent-error tests.
pub const EXHAUSTED_QUEUE: &str = "eda-test.exhausted";

/// Always fails with a retryable error; 2 retries 100 ms apart.
#[job(queue = "eda-test.exhausted", retries = 2, backoff = "100ms..100ms")]
pub async fn never_succeeds(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Err(std::io::Error::other(format!("upstream 503 for {args}")))?;
    Ok(())
}

/// Fails permanently at once.
#[job(queue = "eda-test.exhausted", retries = 5, backoff = "100ms..100ms")]
pub async fn rejects(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Err(JobError::permanent(format!("order {args} does not exist")))
}

/// Queue of the panic and timeout retry tests.
pub const CRASH_QUEUE: &str = "eda-test.crash-retries";

/// Panics on its first attempt.
#[job(queue = "eda-test.crash-retries", backoff = "100ms..100ms")]
pub async fn panics_once(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    assert!(ctx.attempt() > 0, "first attempt of {args} panics");
    Ok(())
}

/// Runs past its timeout on its first attempt.
#[job(
    queue = "eda-test.crash-retries",
    timeout = "300ms",
    backoff = "100ms..100ms"
)]
pub async fn hangs_once(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    if ctx.attempt() == 0 {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    Ok(())
}

/// Queue subscribed to the fanout exchange of the event-retry test.
pub const SUBSCRIBER_QUEUE: &str = "eda-test.subscriber";

/// Fails on its first attempt.
#[job(queue = "eda-test.subscriber", backoff = "100ms..100ms")]
pub async fn subscriber_flaky(ctx: JobContext, args: u32) -> Result<(), JobError> {
    fail_until(&ctx, args).await
}

/// Quorum queue of the quorum tests.
pub const QUORUM_QUEUE: &str = "eda-test.quorum";

/// Fails until attempt `args`, on a quorum queue.
#[job(
    queue = "eda-test.quorum",
    queue_type = "quorum",
    retries = 2,
    backoff = "100ms..200ms"
)]
pub async fn quorum_flaky(ctx: JobContext, args: u32) -> Result<(), JobError> {
    fail_until(&ctx, args).await
}

/// Records its run, on a quorum queue.
#[job(queue = "eda-test.quorum", queue_type = "quorum")]
pub async fn quorum_echo(ctx: JobContext, args: u32) -> Result<(), JobError> {
    record(&ctx, &args);
    Ok(())
}

/// Queues of the dead-letter tooling tests, one per test.
pub const DLQ_TOOL_LIST_QUEUE: &str = "eda-test.dlq-tool-list";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_LIMIT_QUEUE: &str = "eda-test.dlq-tool-limit";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_REPLAY_ID_QUEUE: &str = "eda-test.dlq-tool-replay-id";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_REPLAY_ALL_QUEUE: &str = "eda-test.dlq-tool-replay-all";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_UNKNOWN_ID_QUEUE: &str = "eda-test.dlq-tool-unknown-id";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_PURGE_QUEUE: &str = "eda-test.dlq-tool-purge";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_CLI_LIST_QUEUE: &str = "eda-test.dlq-tool-cli-list";
/// See [`DLQ_TOOL_LIST_QUEUE`].
pub const DLQ_TOOL_CLI_PURGE_QUEUE: &str = "eda-test.dlq-tool-cli-purge";

/// While set for a queue, that queue's dead-letter tooling job fails permanently.
pub struct FailSwitches(Mutex<Option<HashMap<&'static str, bool>>>);

impl FailSwitches {
    /// Makes the job of `queue` fail (`true`) or succeed (`false`).
    pub fn set(&self, queue: &'static str, fail: bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashMap::new)
            .insert(queue, fail);
    }

    fn fails(&self, queue: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|switches| switches.get(queue).copied())
            .unwrap_or(false)
    }
}

/// The switches of the dead-letter tooling jobs (off unless a test sets them).
pub static DLQ_TOOL_FAILS: FailSwitches = FailSwitches(Mutex::new(None));

/// The body of every dead-letter tooling job: fail while the queue's switch
/// says so, else record the run.
fn fail_or_record(ctx: &JobContext, args: &Numbered) -> Result<(), JobError> {
    if DLQ_TOOL_FAILS.fails(ctx.queue()) {
        return Err(JobError::permanent(format!("record {} is broken", args.n)));
    }
    record(ctx, args);
    Ok(())
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-list", retries = 0)]
pub async fn dlq_tool_list(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-limit", retries = 0)]
pub async fn dlq_tool_limit(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-replay-id", retries = 0)]
pub async fn dlq_tool_replay_id(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-replay-all", retries = 0)]
pub async fn dlq_tool_replay_all(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-unknown-id", retries = 0)]
pub async fn dlq_tool_unknown_id(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-purge", retries = 0)]
pub async fn dlq_tool_purge(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-cli-list", retries = 0)]
pub async fn dlq_tool_cli_list(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Fails permanently while switched to fail.
#[job(queue = "eda-test.dlq-tool-cli-purge", retries = 0)]
pub async fn dlq_tool_cli_purge(ctx: JobContext, args: Numbered) -> Result<(), JobError> {
    fail_or_record(&ctx, &args)
}

/// Queue of the client's size-limit test.
pub const OVERSIZE_QUEUE: &str = "eda-test.oversize";

/// Only ever enqueued, never run.
#[job(queue = "eda-test.oversize")]
pub async fn oversized(_ctx: JobContext, _args: String) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test that deletes delay queues under the client and the worker.
pub const DELAY_DELETED_QUEUE: &str = "eda-test.delay-deleted";

/// Fails until attempt `args`, retrying after 100 ms.
#[job(queue = "eda-test.delay-deleted", backoff = "100ms..100ms")]
pub async fn flaky_after_delay(ctx: JobContext, args: u32) -> Result<(), JobError> {
    fail_until(&ctx, args).await
}

/// Arguments of the inbox tests' jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbWrite {
    /// The app table the job writes its effect into (schema-qualified).
    pub table: String,
    /// A value to write.
    pub n: u32,
    /// How long to hold the transaction open after writing, ms.
    pub hold_ms: u64,
    /// Fail (permanently) after writing.
    pub fail: bool,
}

/// Records the run, writes `(message_id, n)` into `args.table` in the job's
/// transaction, holds it, and fails if asked.
async fn write_effect(ctx: &JobContext, args: &DbWrite) -> Result<(), JobError> {
    record(ctx, args);
    let mut tx = ctx.tx().await?;
    let statement = format!("INSERT INTO {} (message_id, n) VALUES ($1, $2)", args.table);
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(ctx.message_id())
        .bind(i64::from(args.n))
        .execute(&mut *tx)
        .await?;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
    if args.fail {
        return Err(JobError::permanent(format!(
            "failing after writing {}",
            args.n
        )));
    }
    Ok(())
}

/// Queue of the redelivery dedup test.
pub const INBOX_DEDUP_QUEUE: &str = "eda-test.inbox-dedup";

/// Writes its effect in the job's transaction.
#[job(queue = "eda-test.inbox-dedup", retries = 0)]
pub async fn inbox_dedup(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue of the concurrent-redelivery race test.
pub const INBOX_RACE_QUEUE: &str = "eda-test.inbox-race";

/// Writes its effect in the job's transaction.
#[job(queue = "eda-test.inbox-race", retries = 0)]
pub async fn inbox_race(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue of the rollback test.
pub const INBOX_ROLLBACK_QUEUE: &str = "eda-test.inbox-rollback";

/// Writes its effect in the job's transaction.
#[job(queue = "eda-test.inbox-rollback", retries = 0)]
pub async fn inbox_rollback(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue of the test without a database.
pub const INBOX_NO_DATABASE_QUEUE: &str = "eda-test.inbox-no-database";

/// Asks for a transaction the worker does not have.
#[job(queue = "eda-test.inbox-no-database", retries = 0)]
pub async fn needs_a_transaction(ctx: JobContext, _args: u32) -> Result<(), JobError> {
    ctx.tx().await?;
    Ok(())
}

/// Queue of the job that requires dedup (its worker never starts without a database).
pub const DEDUP_REQUIRED_QUEUE: &str = "eda-test.dedup-required";

/// Never runs.
#[job(queue = "eda-test.dedup-required", dedup = true)]
pub async fn dedup_required(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the outbox commit/rollback test.
pub const OUTBOX_QUEUE: &str = "eda-test.outbox";

/// Only ever enqueued through the outbox, never run.
#[job(queue = "eda-test.outbox")]
pub async fn outbox_target(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the two-relays test.
pub const OUTBOX_TWO_RELAYS_QUEUE: &str = "eda-test.outbox-two-relays";

/// Only ever enqueued through the outbox, never run.
#[job(queue = "eda-test.outbox-two-relays")]
pub async fn outbox_two_relays(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the relay re-send test.
pub const OUTBOX_RESEND_QUEUE: &str = "eda-test.outbox-resend";

/// Writes its effect in the job's transaction (deduplicated by the inbox).
#[job(queue = "eda-test.outbox-resend", retries = 0)]
pub async fn outbox_resend(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Arguments of the `ctx.enqueue` tests' parent jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Passed on to the child.
    pub n: u32,
    /// Fail (permanently) after enqueueing the child.
    pub fail: bool,
}

/// Queue of the `ctx.enqueue` test with a database.
pub const CHAIN_QUEUE: &str = "eda-test.chain";
/// Where its children go (never consumed).
pub const CHAIN_CHILD_QUEUE: &str = "eda-test.chain-child";

/// Enqueues a child in its transaction, then fails if asked.
#[job(queue = "eda-test.chain", retries = 0)]
pub async fn chain_parent(ctx: JobContext, args: Chain) -> Result<(), JobError> {
    ctx.enqueue(chain_child, args.n).await?;
    if args.fail {
        return Err(JobError::permanent("failing after enqueueing a child"));
    }
    Ok(())
}

/// Never runs.
#[job(queue = "eda-test.chain-child")]
pub async fn chain_child(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the `ctx.enqueue` test without a database.
pub const CHAIN_NO_DATABASE_QUEUE: &str = "eda-test.chain-no-database";
/// Where its children go (never consumed).
pub const CHAIN_NO_DATABASE_CHILD_QUEUE: &str = "eda-test.chain-no-database-child";

/// Enqueues a child, then fails if asked.
#[job(queue = "eda-test.chain-no-database", retries = 0)]
pub async fn chain_parent_without_database(ctx: JobContext, args: Chain) -> Result<(), JobError> {
    ctx.enqueue(chain_child_without_database, args.n).await?;
    if args.fail {
        return Err(JobError::permanent("failing after enqueueing a child"));
    }
    Ok(())
}

/// Never runs.
#[job(queue = "eda-test.chain-no-database-child")]
pub async fn chain_child_without_database(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test of a handler that ignores a failed statement.
pub const INBOX_SWALLOWED_QUEUE: &str = "eda-test.inbox-swallowed";

/// Writes its effect, then runs a statement that fails, ignores the error and
/// returns `Ok`: PostgreSQL would roll the transaction back at the commit.
#[job(queue = "eda-test.inbox-swallowed", retries = 0)]
pub async fn swallows_a_failed_statement(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    record(&ctx, &args);
    let mut tx = ctx.tx().await?;
    let statement = format!("INSERT INTO {} (message_id, n) VALUES ($1, $2)", args.table);
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(ctx.message_id())
        .bind(i64::from(args.n))
        .execute(&mut *tx)
        .await?;
    let ignored = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(ignored.is_err(), "division by zero fails");
    Ok(())
}

/// Queue of the test of enqueueing while holding the transaction.
pub const TX_HELD_QUEUE: &str = "eda-test.tx-held";
/// Where its children go (never consumed).
pub const TX_HELD_CHILD_QUEUE: &str = "eda-test.tx-held-child";

/// Holds its transaction: `ctx.enqueue` is then an error (not a deadlock),
/// and `tx.enqueue` works.
#[job(queue = "eda-test.tx-held", retries = 0)]
pub async fn enqueues_while_holding_the_tx(ctx: JobContext, n: u32) -> Result<(), JobError> {
    let mut tx = ctx.tx().await?;
    let enqueue_error = match ctx.enqueue(tx_held_child, n).await {
        Ok(_) => return Err(JobError::permanent("ctx.enqueue worked while tx was held")),
        Err(error) => error.to_string(),
    };
    if !enqueue_error.contains("drop it first, or call `enqueue` on it") {
        return Err(JobError::permanent(format!(
            "unexpected error: {enqueue_error}"
        )));
    }
    tx.enqueue(tx_held_child, n).await?;
    Ok(())
}

/// Never runs.
#[job(queue = "eda-test.tx-held-child")]
pub async fn tx_held_child(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queues of the test of one message id on two queues (as an event reaches
/// each of its subscribers).
pub const INBOX_PER_QUEUE_A: &str = "eda-test.inbox-per-queue-a";
/// The second one.
pub const INBOX_PER_QUEUE_B: &str = "eda-test.inbox-per-queue-b";

/// Writes its effect in the job's transaction.
#[job(queue = "eda-test.inbox-per-queue-a", retries = 0)]
pub async fn inbox_per_queue_a(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Writes its effect in the job's transaction.
#[job(queue = "eda-test.inbox-per-queue-b", retries = 0)]
pub async fn inbox_per_queue_b(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue of the test that deletes a queue under the relay.
pub const OUTBOX_REDECLARE_QUEUE: &str = "eda-test.outbox-redeclare";

/// Only ever enqueued through the outbox, never run.
#[job(queue = "eda-test.outbox-redeclare")]
pub async fn outbox_redeclare(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test with a schema named like an SQL keyword.
pub const OUTBOX_KEYWORD_SCHEMA_QUEUE: &str = "eda-test.outbox-keyword-schema";

/// Only ever enqueued through the outbox, never run.
#[job(queue = "eda-test.outbox-keyword-schema")]
pub async fn outbox_keyword_schema(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test whose worker loses its connection between the commit
/// and the ack.
pub const INBOX_ACK_LOST_QUEUE: &str = "eda-test.inbox-ack-lost";

/// Writes its effect in the job's transaction, holding it open as asked.
#[job(queue = "eda-test.inbox-ack-lost", retries = 0)]
pub async fn inbox_ack_lost(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue of the rows batched with the deleted queue's in that test.
pub const OUTBOX_REDECLARE_OTHER_QUEUE: &str = "eda-test.outbox-redeclare-other";

/// Only ever enqueued through the outbox, never run.
#[job(queue = "eda-test.outbox-redeclare-other")]
pub async fn outbox_redeclare_other(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
    Ok(())
}

/// Queue of the test whose inbox claim waits on a row lock held elsewhere.
pub const INBOX_LOCKED_QUEUE: &str = "eda-test.inbox-locked";

/// Writes its effect in the job's transaction; its 1 s timeout bounds the
/// claim's lock wait to 6 s.
#[job(queue = "eda-test.inbox-locked", retries = 0, timeout = "1s")]
pub async fn inbox_locked(ctx: JobContext, args: DbWrite) -> Result<(), JobError> {
    write_effect(&ctx, &args).await
}

/// Queue bound to `amq.direct` in the test of a scheduled row for a named
/// exchange (never consumed).
pub const OUTBOX_EXCHANGE_QUEUE: &str = "eda-test.outbox-exchange";
