//! eda-worker's tables: `worker migrate` creates them in their own schema,
//! running it again changes nothing, a database migrated by a newer
//! eda-worker is refused with a clear error, and a worker stops at start
//! when the tables are missing or older than it needs.

use eda_worker::Job;
use eda_worker::postgres::Database;
use eda_worker_tests::WAIT;
use eda_worker_tests::database::{execute, fresh_database, migrated_database, remove_database};
use eda_worker_tests::jobs::migrations::unmigrated;
use eda_worker_tests::process::database_env;
use eda_worker_tests::worker_command;
use sqlx::AssertSqlSafe;

async fn tables(database: &Database) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(database.schema().as_str())
    .fetch_all(database.pool())
    .await
    .unwrap()
}

async fn applied(database: &Database) -> Vec<i64> {
    let statement = format!(
        "SELECT version FROM {}._sqlx_migrations ORDER BY version",
        database.schema()
    );
    sqlx::query_scalar(AssertSqlSafe(statement))
        .fetch_all(database.pool())
        .await
        .unwrap()
}

/// Runs `worker migrate` with `args` and only the database settings of
/// `env`; returns its exit code, stdout and stderr.
async fn migrate_command(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let output = worker_command!("migrate")
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn migrations_create_the_tables_in_their_own_schema_and_apply_once() {
    let database = migrated_database("eda_test_migrate_once").await;
    assert_eq!(
        tables(&database).await,
        ["_sqlx_migrations", "inbox", "job_starts", "outbox"]
    );
    assert_eq!(applied(&database).await, [1, 2, 3, 4]);
    // Nothing of eda-worker's lands in the app's schema.
    let in_public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('inbox', 'outbox')",
    )
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(in_public, 0);

    database.migrate().await.unwrap();
    assert_eq!(
        applied(&database).await,
        [1, 2, 3, 4],
        "re-running is a no-op"
    );
    remove_database(database).await;
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_is_refused() {
    let database = migrated_database("eda_test_migrate_newer").await;
    execute(
        &database,
        format!(
            "INSERT INTO {}._sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from the future', true, '\\x00', 0)",
            database.schema()
        ),
    )
    .await;
    let error = database.migrate().await.unwrap_err().to_string();
    assert!(
        error.contains("schema `eda_test_migrate_newer` has migration 99 applied")
            && error.contains("a newer eda-worker migrated this database"),
        "{error}"
    );
    remove_database(database).await;
}

#[tokio::test]
async fn worker_migrate_applies_the_migrations_and_says_what_is_missing() {
    let database = fresh_database("eda_test_migrate_cli").await;
    let (code, stdout, stderr) = migrate_command(&[], &database_env(&database)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "schema `eda_test_migrate_cli` is at migration 4"
    );
    assert_eq!(applied(&database).await, [1, 2, 3, 4]);

    let (code, _, stderr) = migrate_command(&[], &[]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("worker migrate needs a database: set DATABASE_URL or pass --database-url")
    );

    let url = ["--database-url", "postgres://app:hunter2@127.0.0.1:1/test"];
    let (code, _, stderr) = migrate_command(&url, &[]).await;
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(
        stderr.contains("could not connect to PostgreSQL at postgres://app:***@127.0.0.1:1/test"),
        "{stderr}"
    );
    remove_database(database).await;
}

#[tokio::test]
async fn a_worker_stops_at_start_naming_worker_migrate_when_the_tables_are_missing_or_old() {
    let queue = <unmigrated as Job>::QUEUE;
    let run = |env: [(&'static str, String); 2]| async move {
        let output = tokio::time::timeout(
            WAIT,
            worker_command!("run", "--queues", queue, "--no-relay")
                .envs(env)
                .output(),
        )
        .await
        .expect("the worker stops at start")
        .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let database = fresh_database("eda_test_unmigrated").await;
    let (code, stderr) = run(database_env(&database)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "eda-worker's tables in schema `eda_test_unmigrated` are not migrated (no migration applied; this binary needs up to 4): run `worker migrate`, or start the worker with --migrate"
        ),
        "{stderr}"
    );

    // Migrated by an older eda-worker: the newest migration is missing.
    database.migrate().await.unwrap();
    execute(
        &database,
        format!(
            "DELETE FROM {schema}._sqlx_migrations WHERE version = 4; ALTER TABLE {schema}.outbox DROP COLUMN exchange_kind",
            schema = database.schema()
        ),
    )
    .await;
    let error = database.check_migrated().await.unwrap_err();
    assert!(
        matches!(
            error,
            eda_worker::Error::NotMigrated {
                applied: Some(3),
                needed: 4,
                ..
            }
        ),
        "{error}"
    );
    let (code, stderr) = run(database_env(&database)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("(applied up to 3; this binary needs up to 4): run `worker migrate`"),
        "{stderr}"
    );

    // `--migrate` brings it up to date; the check passes.
    database.migrate().await.unwrap();
    database.check_migrated().await.expect("migrated");
    assert_eq!(applied(&database).await, [1, 2, 3, 4]);
    remove_database(database).await;
}
