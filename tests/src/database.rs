//! Test databases: one eda-worker schema per test (dropped before and
//! after), an app table for a job's effects, and the counts tests assert on.

use eda_worker::postgres::{Database, Schema, database_url_from_env};
use sqlx::AssertSqlSafe;

/// The test database on this machine, used when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    database_url_from_env().unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// A connection to the test database whose eda-worker schema is `schema`,
/// dropped first so that the test starts clean (and not yet migrated).
pub async fn fresh_database(schema: &str) -> Database {
    let schema = Schema::new(schema).expect("valid schema name");
    let database = Database::connect(&database_url(), schema)
        .await
        .expect("PostgreSQL must run for the integration tests (see .ci/run)");
    drop_schema(&database).await;
    database
}

/// [`fresh_database`] with eda-worker's tables created.
pub async fn migrated_database(schema: &str) -> Database {
    let database = fresh_database(schema).await;
    database.migrate().await.expect("migrate the test schema");
    database
}

/// Drops the database's eda-worker schema and everything in it.
pub async fn drop_schema(database: &Database) {
    execute(
        database,
        format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", database.schema()),
    )
    .await;
}

/// Drops the schema and closes the pool: a test's last step.
pub async fn remove_database(database: Database) {
    drop_schema(&database).await;
    database.close().await;
}

/// Runs `statement` (one or more statements, no parameters).
pub async fn execute(database: &Database, statement: String) {
    sqlx::raw_sql(AssertSqlSafe(statement.clone()))
        .execute(database.pool())
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"));
}

/// Creates the app table `<schema>.effects` that the database jobs write
/// `(message_id, n)` into, and returns its qualified name.
pub async fn effects_table(database: &Database) -> String {
    let table = format!("{}.effects", database.schema());
    execute(
        database,
        format!("CREATE TABLE {table} (message_id text NOT NULL, n bigint NOT NULL)"),
    )
    .await;
    table
}

/// The number `statement` (a `SELECT count(...)`) returns.
pub async fn count(database: &Database, statement: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(statement.to_owned()))
        .fetch_one(database.pool())
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"))
}

/// Rows of `table` for message `id`.
pub async fn rows_for_message(database: &Database, table: &str, id: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE message_id = $1"
    )))
    .bind(id)
    .fetch_one(database.pool())
    .await
    .expect("count rows")
}

/// Inbox rows for message `id`.
pub async fn inbox_rows(database: &Database, id: &str) -> i64 {
    rows_for_message(database, &format!("{}.inbox", database.schema()), id).await
}

/// Whether a session is running `statement_like` (a `LIKE` pattern) and
/// sleeping in `pg_sleep`: a slow trigger a test set up is holding it.
pub async fn sleeping_in(database: &Database, statement_like: &str) -> bool {
    let sleeping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND wait_event = 'PgSleep'",
    )
    .bind(statement_like)
    .fetch_one(database.pool())
    .await
    .expect("read pg_stat_activity");
    sleeping > 0
}

/// Creates `<schema>.<name>()`, a trigger function that sleeps 2 s: a
/// statement or a commit that fires it stays in flight long enough for a test
/// to kill its client there.
pub async fn slow_trigger_function(database: &Database, name: &str) -> String {
    let function = format!("{}.{name}", database.schema());
    execute(
        database,
        format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        ),
    )
    .await;
    function
}
