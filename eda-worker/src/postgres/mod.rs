//! PostgreSQL: eda-worker's own tables (the inbox and the outbox) in a schema
//! of their own, and the migrations that create them.
//!
//! ```no_run
//! use eda_worker::postgres::{Database, Schema};
//!
//! # async fn demo() -> Result<(), eda_worker::Error> {
//! let database = Database::connect("postgres://app@db/app", Schema::default()).await?;
//! database.migrate().await?; // what `worker migrate` does
//! # Ok(()) }
//! ```

pub(crate) mod health;
pub(crate) mod inbox;
mod migrate;
pub mod outbox;
pub(crate) mod transaction;

pub use migrate::latest_version;

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::Error;
use crate::broker::redact_url;

/// The longest schema name: the outbox's notification channel is
/// `<schema>_outbox`, and PostgreSQL's identifiers have at most 63 bytes.
pub const MAX_SCHEMA_NAME: usize = 56;

/// The schema of eda-worker's tables when not configured.
pub const DEFAULT_SCHEMA: &str = "eda_worker";

/// How long processed message ids are kept when not configured: a message
/// redelivered later than this after its effects committed would run again.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a checkout from the pool may wait for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a pooled connection may sit idle before a checkout tests it again.
const RETEST_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The name of eda-worker's schema: a plain lower-case SQL identifier (always
/// quoted in statements, so that a keyword such as `user` works too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Default for Schema {
    fn default() -> Self {
        Schema(DEFAULT_SCHEMA.to_owned())
    }
}

impl Schema {
    /// A schema name: 1 to 56 of `a-z`, `0-9` and `_`, not starting with a
    /// digit, and not `pg_`-prefixed (reserved by PostgreSQL). 56, so that the
    /// outbox's notification channel `<schema>_outbox` fits PostgreSQL's 63.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_SCHEMA_NAME
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && !name.starts_with("pg_")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Schema(name))
        } else {
            Err(Error::Config(format!(
                "invalid database schema name `{name}`: use 1 to {MAX_SCHEMA_NAME} of a-z, 0-9 and _, not starting with a digit or pg_"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as an SQL identifier.
    pub(crate) fn quoted(&self) -> String {
        // The name holds no `"`: see `new`.
        format!("\"{}\"", self.0)
    }

    /// `"<schema>".<table>`, for statements.
    pub(crate) fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.quoted())
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `DATABASE_URL`, if set and not empty.
pub fn database_url_from_env() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Database connections a worker may use at once: one per running job, the
/// relay's (LISTEN and its batches) and the pruner's.
pub(crate) fn pool_size(concurrency: usize, queues: usize, relay: bool) -> u32 {
    let jobs = concurrency.saturating_mul(queues);
    let relay = if relay { outbox::RELAY_CONNECTIONS } else { 0 };
    u32::try_from(jobs.saturating_add(relay).saturating_add(1)).unwrap_or(u32::MAX)
}

/// A connection pool and the schema of eda-worker's tables.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    schema: Schema,
}

/// Connections of the pool [`Database::connect`] makes.
pub const DEFAULT_POOL_SIZE: u32 = 32;

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects a pool to `url`. The first connection is made now, so a wrong
    /// URL or an unreachable server is an error here (its password redacted).
    ///
    /// The pool holds up to 32 connections. Each job running with a
    /// transaction holds one, and the relay up to five: see
    /// [`Database::connect_with_pool_size`] for a larger worker.
    pub async fn connect(url: &str, schema: Schema) -> Result<Self, Error> {
        Self::connect_with_pool_size(url, schema, DEFAULT_POOL_SIZE).await
    }

    /// [`Database::connect`] with a pool of up to `max_connections`
    /// (connections are opened as they are needed).
    pub async fn connect_with_pool_size(
        url: &str,
        schema: Schema,
        max_connections: u32,
    ) -> Result<Self, Error> {
        // sqlx does not know `sslpassword` and would log its value as an
        // unrecognized parameter.
        let lower = url.to_ascii_lowercase();
        if lower.contains("?sslpassword=") || lower.contains("&sslpassword=") {
            return Err(Error::Config(format!(
                "the database URL {} has an `sslpassword` parameter, which is not supported: use an unencrypted client key (sslkey) instead",
                redact_url(url)
            )));
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx tests a connection as it goes back to the pool; testing
            // it again at every checkout would cost each job a round trip.
            // Only one idle for a while (the server may have closed it
            // since) is tested again; a test that fails closes it and the
            // checkout takes another.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > RETEST_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await
            .map_err(|source| Error::DatabaseConnect {
                url: redact_url(url),
                source,
            })?;
        Ok(Database { pool, schema })
    }

    /// Uses the app's own pool (its size bounds the jobs that run at once
    /// with a transaction).
    pub fn from_pool(pool: PgPool, schema: Schema) -> Self {
        Database { pool, schema }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema of eda-worker's tables.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Creates or updates eda-worker's tables. Running it again is a no-op;
    /// a database migrated by a newer eda-worker is an error.
    pub async fn migrate(&self) -> Result<(), Error> {
        migrate::run(&self.pool, &self.schema).await
    }

    /// Checks that eda-worker's tables are migrated as far as this binary
    /// needs: [`Error::NotMigrated`] names `worker migrate` when they are not.
    /// The worker and the relay check this at start (unless they migrate).
    pub async fn check_migrated(&self) -> Result<(), Error> {
        migrate::check(&self.pool, &self.schema).await
    }

    /// Deletes inbox rows processed more than `retention` ago, in small
    /// batches; returns how many. The worker does this every few minutes.
    pub async fn prune_inbox(&self, retention: Duration) -> Result<u64, Error> {
        inbox::prune(self, retention)
            .await
            .map_err(|source| Error::Database {
                operation: format!("prune of the inbox (schema `{}`)", self.schema),
                source,
            })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Database, Schema};

    #[tokio::test]
    async fn an_sslpassword_parameter_is_refused_before_connecting_and_not_shown() {
        let error = Database::connect(
            "postgres://app:s3cret@127.0.0.1:1/app?sslmode=require&SSLPASSWORD=k3y",
            Schema::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("`sslpassword` parameter"), "{error}");
        assert!(
            !error.contains("s3cret") && !error.contains("k3y"),
            "{error}"
        );
    }
}
