//! Where eda-worker's tables are (`--database-url`, `--db-schema`), and
//! `worker migrate`.

use clap::Args;

use crate::postgres::{DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, Database, Schema};

/// Where eda-worker's tables are.
#[derive(Debug, Args)]
pub(super) struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema of eda-worker's tables (kept apart from the app's).
    #[arg(long, env = "EDA_DB_SCHEMA", default_value = DEFAULT_SCHEMA)]
    db_schema: String,
}

impl DatabaseArgs {
    /// Connects, failing when no URL is configured: `command` needs a database.
    pub(super) async fn require(self, command: &str) -> Result<Database, crate::Error> {
        self.connect().await?.ok_or_else(|| {
            crate::Error::Config(format!(
                "{command} needs a database: set DATABASE_URL or pass --database-url"
            ))
        })
    }

    /// Connects, when a URL is configured.
    pub(super) async fn connect(self) -> Result<Option<Database>, crate::Error> {
        self.connect_with_pool_size(DEFAULT_POOL_SIZE).await
    }

    /// Connects with a pool of up to `max_connections`, when a URL is configured.
    pub(super) async fn connect_with_pool_size(
        self,
        max_connections: u32,
    ) -> Result<Option<Database>, crate::Error> {
        let schema = Schema::new(self.db_schema)?;
        match self.database_url {
            Some(url) => Ok(Some(
                Database::connect_with_pool_size(&url, schema, max_connections).await?,
            )),
            None => Ok(None),
        }
    }
}

pub(super) async fn migrate(args: DatabaseArgs) -> Result<(), crate::Error> {
    let database = args.require("worker migrate").await?;
    let migrated = database.migrate().await;
    database.close().await;
    migrated?;
    println!(
        "schema `{}` is at migration {}",
        database.schema(),
        crate::postgres::latest_version()
    );
    Ok(())
}
