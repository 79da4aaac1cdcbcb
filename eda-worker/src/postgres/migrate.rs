//! Applying `migrations/` (embedded at build time) to eda-worker's schema.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AssertSqlSafe, PgPool};

use super::Schema;
use crate::Error;

/// The migrations of this eda-worker, from the repository's `migrations/`.
static MIGRATIONS: Migrator = sqlx::migrate!("../migrations");

/// Applies every migration not applied yet, on one connection whose
/// `search_path` is the schema (the SQL files name no schema), with the
/// bookkeeping in `<schema>._sqlx_migrations`.
pub(super) async fn run(pool: &PgPool, schema: &Schema) -> Result<(), Error> {
    let database_error = |operation: &str, source| Error::Database {
        operation: format!("{operation} (schema `{schema}`)"),
        source,
    };
    let mut connection = pool
        .acquire()
        .await
        .map_err(|source| database_error("connect for migrations", source))?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut *connection)
    .await
    .map_err(|source| database_error("create schema", source))?;
    sqlx::query(AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut *connection)
        .await
        .map_err(|source| database_error("set search_path", source))?;
    // A copy through the public API, to name the bookkeeping table.
    let mut migrator = Migrator::with_migrations(MIGRATIONS.iter().cloned().collect());
    migrator.dangerous_set_table_name(schema.table("_sqlx_migrations"));
    let migrated = migrator.run(&mut *connection).await;
    // The connection goes back to the pool: it must not keep our search_path.
    let reset = sqlx::query("RESET search_path")
        .execute(&mut *connection)
        .await;
    if reset.is_err() {
        // A connection in an unknown state is not handed to anyone else.
        connection.detach();
    }
    migrated.map_err(|source| migrate_error(schema, source))?;
    tracing::info!(schema = %schema, latest = latest_version(), "database migrated");
    Ok(())
}

/// The newest migration this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

fn migrate_error(schema: &Schema, source: MigrateError) -> Error {
    match source {
        MigrateError::VersionMissing(version) => Error::Config(format!(
            "schema `{schema}` has migration {version} applied, which this binary does not know: a newer eda-worker migrated this database (this one knows up to {}); run the newer version, or a migration of this version against another schema",
            latest_version()
        )),
        MigrateError::VersionMismatch(version) => Error::Config(format!(
            "migration {version} in schema `{schema}` differs from this binary's: migrations must not be edited once applied"
        )),
        source => Error::Migrate {
            schema: schema.to_string(),
            source,
        },
    }
}
