//! eda-worker's tables: `worker migrate` creates them in their own schema,
//! running it again changes nothing, and a database migrated by a newer
//! eda-worker is refused with a clear error.

use eda_worker_tests::{database_url, drop_schema, fresh_database};
use sqlx::{AssertSqlSafe, Row};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

async fn tables(database: &eda_worker::postgres::Database) -> Vec<String> {
    sqlx::query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(database.schema().as_str())
    .fetch_all(database.pool())
    .await
    .unwrap()
    .iter()
    .map(|row| row.get::<String, _>(0))
    .collect()
}

async fn applied(database: &eda_worker::postgres::Database) -> Vec<i64> {
    let statement = format!(
        "SELECT version FROM {}._sqlx_migrations ORDER BY version",
        database.schema()
    );
    sqlx::query(AssertSqlSafe(statement))
        .fetch_all(database.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect()
}

#[tokio::test]
async fn migrations_create_the_tables_in_their_own_schema_and_apply_once() {
    let database = fresh_database("eda_test_migrate_once").await;
    database.migrate().await.unwrap();
    assert_eq!(
        tables(&database).await,
        ["_sqlx_migrations", "inbox", "outbox"]
    );
    assert_eq!(applied(&database).await, [1, 2]);
    // Nothing of eda-worker's lands in the app's schema.
    let in_public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('inbox', 'outbox')",
    )
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(in_public, 0);

    database.migrate().await.unwrap();
    assert_eq!(applied(&database).await, [1, 2], "re-running is a no-op");
    drop_schema(&database).await;
    database.close().await;
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_is_refused() {
    let database = fresh_database("eda_test_migrate_newer").await;
    database.migrate().await.unwrap();
    let statement = format!(
        "INSERT INTO {}._sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from the future', true, '\\x00', 0)",
        database.schema()
    );
    sqlx::query(AssertSqlSafe(statement))
        .execute(database.pool())
        .await
        .unwrap();
    let error = database.migrate().await.unwrap_err().to_string();
    assert!(
        error.contains("schema `eda_test_migrate_newer` has migration 99 applied")
            && error.contains("a newer eda-worker migrated this database"),
        "{error}"
    );
    drop_schema(&database).await;
    database.close().await;
}

#[tokio::test]
async fn worker_migrate_applies_the_migrations_and_says_what_is_missing() {
    let database = fresh_database("eda_test_migrate_cli").await;
    let output = Command::new(WORKER)
        .arg("migrate")
        .env("DATABASE_URL", database_url())
        .env("EDA_DB_SCHEMA", "eda_test_migrate_cli")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "schema `eda_test_migrate_cli` is at migration 2"
    );
    assert_eq!(applied(&database).await, [1, 2]);

    let output = Command::new(WORKER)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("worker migrate needs a database: set DATABASE_URL or pass --database-url")
    );

    let output = Command::new(WORKER)
        .args([
            "migrate",
            "--database-url",
            "postgres://app:hunter2@127.0.0.1:1/test",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(
        stderr.contains("could not connect to PostgreSQL at postgres://app:***@127.0.0.1:1/test"),
        "{stderr}"
    );
    drop_schema(&database).await;
    database.close().await;
}
