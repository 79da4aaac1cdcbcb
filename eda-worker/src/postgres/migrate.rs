//! Applying `migrations/` (embedded at build time) to eda-worker's schema.

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;

use super::Schema;
use crate::Error;

/// The migrations of this eda-worker, from the repository's `migrations/`.
static MIGRATIONS: Migrator = sqlx::migrate!("../migrations");

/// Applies every migration not applied yet, over a one-connection pool of
/// its own whose `search_path` is the schema (the SQL files name no schema),
/// with the bookkeeping in `<schema>._sqlx_migrations`. (A pool rather than a
/// borrowed connection: sqlx's migrator on `&mut PgConnection` makes futures
/// that are not `Send` for every lifetime, which `tokio::spawn` refuses.)
pub(super) async fn run(pool: &PgPool, schema: &Schema) -> Result<(), Error> {
    let options = (*pool.connect_options())
        .clone()
        .options([("search_path", schema.quoted())]);
    let migration_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|source| Error::Database {
            operation: format!("connect for migrations (schema `{schema}`)"),
            source,
        })?;
    let mut migrator = Migrator::with_migrations(MIGRATIONS.iter().cloned().collect());
    migrator.create_schema(schema.quoted());
    migrator.dangerous_set_table_name(schema.table("_sqlx_migrations"));
    let migrated = migrator.run(&migration_pool).await;
    migration_pool.close().await;
    migrated.map_err(|source| migrate_error(schema, source))?;
    tracing::info!(schema = %schema, latest = latest_version(), "database migrated");
    Ok(())
}

/// Checks that every migration of this binary is applied to `schema`, so
/// that a worker never runs jobs against tables that are missing or old.
/// A newer database (migrations this binary does not know) is fine: they
/// only add.
pub(super) async fn check(pool: &PgPool, schema: &Schema) -> Result<(), Error> {
    let statement = format!(
        "SELECT version FROM {} WHERE success",
        schema.table("_sqlx_migrations")
    );
    let applied: Vec<i64> = match sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
        .fetch_all(pool)
        .await
    {
        Ok(applied) => applied,
        // 42P01: no bookkeeping table, so never migrated (3F000: no schema at all).
        Err(error)
            if error
                .as_database_error()
                .and_then(|error| error.code())
                .is_some_and(|code| code == "42P01" || code == "3F000") =>
        {
            Vec::new()
        }
        Err(source) => {
            return Err(Error::Database {
                operation: format!("check of the migrations in schema `{schema}`"),
                source,
            });
        }
    };
    if MIGRATIONS
        .iter()
        .all(|migration| applied.contains(&migration.version))
    {
        return Ok(());
    }
    Err(Error::NotMigrated {
        schema: schema.to_string(),
        applied: applied.iter().copied().max(),
        needed: latest_version(),
    })
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
        MigrateError::VersionMissing(version) => Error::DatabaseNewer {
            schema: schema.to_string(),
            version,
            known: latest_version(),
        },
        MigrateError::VersionMismatch(version) => Error::MigrationChanged {
            schema: schema.to_string(),
            version,
        },
        source => Error::Migrate {
            schema: schema.to_string(),
            source,
        },
    }
}
