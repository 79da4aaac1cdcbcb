//! Whether the database answers: a failure to begin, claim or commit a job's
//! transaction because PostgreSQL is away (a restart, a failover) is not the
//! job's fault. The first one marks the database down; the queues that use
//! it stop taking deliveries, and one probe loop tries the database with
//! backoff until it answers, then marks it up again.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::error::error_chain_text;
use crate::retry::Backoff;

/// The pauses between two probes of a database that is down.
const PROBE_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(250),
    max: Duration::from_secs(5),
};

/// How long one probe (a checkout and `SELECT 1`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATEs of a database that is away rather than of a statement that
/// failed: class 08 (connection exception) and these.
const OUTAGE_STATES: [&str; 5] = [
    "57P01", // admin_shutdown: a fast shutdown or restart
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now: starting up, or in recovery
    "53300", // too_many_connections
    "25006", // read_only_sql_transaction: a standby, during a failover
];

/// Whether `error` says the database is away (unreachable, restarting, in
/// failover) rather than that a statement failed.
pub(crate) fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || OUTAGE_STATES.contains(&code.as_ref())),
        _ => false,
    }
}

/// The first error in `error`'s chain that is a database outage, if any
/// (a handler's error that came from `ctx.tx()` or its own statements).
pub(crate) fn outage_in_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a sqlx::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(sqlx_error) = error.downcast_ref::<sqlx::Error>()
            && is_outage(sqlx_error)
        {
            return Some(sqlx_error);
        }
        next = error.source();
    }
    None
}

/// Whether the worker's database answers, shared by its queues.
#[derive(Debug)]
pub(crate) struct DatabaseHealth {
    database: Database,
    up: watch::Sender<bool>,
    /// Stops the probe loop with the worker.
    token: CancellationToken,
}

impl DatabaseHealth {
    pub(crate) fn new(database: Database, token: CancellationToken) -> Arc<Self> {
        Arc::new(DatabaseHealth {
            database,
            up: watch::Sender::new(true),
            token,
        })
    }

    /// Whether the database answers, and its changes.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Whether the database is taken for down.
    pub(crate) fn is_down(&self) -> bool {
        !*self.up.borrow()
    }

    /// Marks the database down after `error` (one that [`is_outage`]), and
    /// starts the probe loop unless it is already down.
    pub(crate) fn report_outage(self: &Arc<Self>, operation: &str, error: &sqlx::Error) {
        let went_down = self.up.send_if_modified(|up| std::mem::replace(up, false));
        if !went_down {
            return;
        }
        tracing::error!(
            operation,
            error = %error_chain_text(error),
            "PostgreSQL does not answer: the queues that use it stop taking jobs until it does, and jobs handed back meanwhile spend no retry"
        );
        let health = self.clone();
        tokio::spawn(async move { health.probe_until_up().await });
    }

    /// Whether a handler's database error (`error`) means the database is
    /// away: when it is already taken for down, or a probe fails now. A
    /// probe tells an outage of the worker's database from a handler's own
    /// connection elsewhere failing, which is the handler's error.
    pub(crate) async fn confirm_outage(self: &Arc<Self>, error: &sqlx::Error) -> bool {
        if self.is_down() {
            return true;
        }
        match self.probe().await {
            Ok(()) => false,
            Err(_) => {
                self.report_outage("a job's statement", error);
                true
            }
        }
    }

    /// A checkout and `SELECT 1`, bounded.
    async fn probe(&self) -> Result<(), sqlx::Error> {
        let probe = sqlx::query("SELECT 1").execute(self.database.pool());
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    async fn probe_until_up(&self) {
        let probes = (|| self.probe())
            .retry(PROBE_BACKOFF.delays())
            .notify(|error: &sqlx::Error, retry_in: Duration| {
                tracing::warn!(error = %error_chain_text(error), ?retry_in, "PostgreSQL still does not answer");
            });
        tokio::select! {
            () = self.token.cancelled() => {}
            answered = probes => {
                if answered.is_ok() {
                    tracing::info!("PostgreSQL answers again: taking jobs again");
                    self.up.send_replace(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_outages_and_statement_failures_are_not() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(is_outage(&io));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(!is_outage(&sqlx::Error::ColumnNotFound("x".into())));
    }

    #[test]
    fn an_outage_is_found_down_a_chain_of_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("handler failed")]
        struct Handler(#[source] crate::Error);
        let wrapped = Handler(crate::Error::Database {
            operation: "begin".into(),
            source: sqlx::Error::PoolTimedOut,
        });
        assert!(matches!(
            outage_in_chain(&wrapped),
            Some(sqlx::Error::PoolTimedOut)
        ));
        let statement = Handler(crate::Error::Database {
            operation: "insert".into(),
            source: sqlx::Error::RowNotFound,
        });
        assert!(outage_in_chain(&statement).is_none());
    }
}
