//! The transaction a job's handler runs in: on a pooled connection, begun by
//! one statement batch of the worker's (`BEGIN`, the lock timeout and, for a
//! job that dedups, its inbox claim), so that all of it takes one round trip.
//!
//! sqlx's own `begin_with` runs such a batch but answers only "begun" or
//! "failed", and drops the connection back into the pool, in an aborted
//! transaction, when a statement of the batch fails; a claim must tell a
//! duplicate from a failure and keep the connection usable. So this type
//! holds the connection itself and uses sqlx's transaction manager, which
//! keeps sqlx's count of open transactions right: a handler's `begin()` on
//! the connection makes a savepoint, as it would in a `sqlx::Transaction`.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgTransactionManager;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, SqlSafeStr, SqlStr};
use sqlx_core::transaction::TransactionManager;

use super::health::is_outage;

/// How long a rollback may take (after a failed begin statement, or a
/// failed attempt) before the connection is left to close or to finish it
/// in the background.
pub(crate) const ROLLBACK_WAIT: Duration = Duration::from_secs(2);

/// An open transaction on a connection of the pool; rolled back when
/// dropped unfinished (the connection goes back to the pool after).
#[derive(Debug)]
pub(crate) struct JobTransaction {
    conn: PoolConnection<Postgres>,
    /// Neither committed nor rolled back yet.
    open: bool,
}

impl JobTransaction {
    /// Begins a transaction on a connection of `pool` with `statement`, a
    /// batch that starts with `BEGIN` (see [`begin_statement`]), in one round
    /// trip.
    ///
    /// When a statement of the batch fails, its error is returned and the
    /// connection is rolled back and pooled again (closed if the rollback
    /// does not answer). A begin dropped midway, its task aborted, closes its
    /// connection: what state it was left in is unknown. A connection the
    /// server closed since it was last tested (the pool tests only those
    /// idle for a while) fails as an outage: the batch is tried once more,
    /// on another connection, before that is reported.
    pub(crate) async fn begin(pool: &PgPool, statement: String) -> Result<Self, sqlx::Error> {
        let statement = AssertSqlSafe(statement).into_sql_str();
        let conn = pool.acquire().await?;
        match Self::begin_on(conn, statement.clone()).await {
            Err(error) if is_outage(&error) => {
                Self::begin_on(pool.acquire().await?, statement).await
            }
            begun => begun,
        }
    }

    async fn begin_on(
        mut conn: PoolConnection<Postgres>,
        statement: SqlStr,
    ) -> Result<Self, sqlx::Error> {
        let mut pending = Pending {
            conn: &mut conn,
            settled: false,
        };
        let begun = PgTransactionManager::begin(pending.conn, Some(statement)).await;
        pending.settled = match &begun {
            Ok(()) => true,
            // A statement failed inside the batch's transaction block, which
            // is now aborted: end it. Any other error (I/O, the protocol)
            // leaves the connection to be closed.
            Err(sqlx::Error::Database(_)) => {
                let rollback = sqlx::raw_sql("ROLLBACK").execute(&mut **pending.conn);
                matches!(
                    tokio::time::timeout(ROLLBACK_WAIT, rollback).await,
                    Ok(Ok(_))
                )
            }
            Err(_) => false,
        };
        drop(pending);
        begun.map(|()| JobTransaction { conn, open: true })
    }

    /// Whether the transaction is as the worker began it: still open, and
    /// no savepoint of the handler's left open. A savepoint the handler
    /// leaked (`mem::forget`) leaves sqlx's depth above 1; one whose begin
    /// failed or was cancelled made sqlx roll back the whole transaction
    /// (depth 0), after which the handler's statements ran outside it.
    pub(crate) fn is_intact(&self) -> bool {
        PgTransactionManager::get_transaction_depth(&self.conn) == 1
    }

    /// Ends a transaction that is not intact by closing its connection
    /// (PostgreSQL rolls back what is open): sqlx's count of it is wrong, so
    /// neither a commit nor a rollback through sqlx would end it.
    pub(crate) fn discard(mut self) {
        self.open = false;
        self.conn.close_on_drop();
    }

    /// Commits the transaction.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        PgTransactionManager::commit(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }

    /// Rolls the transaction back (discards it when it is not intact).
    pub(crate) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if !self.is_intact() {
            self.discard();
            return Ok(());
        }
        PgTransactionManager::rollback(&mut self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for JobTransaction {
    fn drop(&mut self) {
        if self.open {
            // Queued: sent when the pool tests the connection on its return.
            PgTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

impl Deref for JobTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for JobTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A connection whose begin has not answered yet: closed, not pooled,
/// unless it settled in a known state before this is dropped (a begin
/// dropped midway, its task aborted, drops it unsettled).
struct Pending<'a> {
    conn: &'a mut PoolConnection<Postgres>,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.conn.close_on_drop();
        }
    }
}

/// `BEGIN` and a lock timeout for the transaction: its lock waits end
/// after `lock_timeout`.
pub(crate) fn begin_statement(lock_timeout: Duration) -> String {
    let lock_timeout_ms = lock_timeout.as_millis().clamp(1, i32::MAX as u128);
    format!("BEGIN; SET LOCAL lock_timeout = {lock_timeout_ms}")
}

/// `value` as an SQL string literal for a statement batch, which cannot take
/// bind parameters: an escape string (`E'...'`) with every backslash and
/// quote doubled, which reads the same whatever the server's
/// `standard_conforming_strings`, and in UTF-8 no byte of a multi-byte
/// character is a quote or a backslash. `None` for a value holding a NUL
/// byte, which no PostgreSQL text can hold.
pub(crate) fn literal(value: &str) -> Option<String> {
    if value.contains('\0') {
        return None;
    }
    let mut quoted = String::with_capacity(value.len() + 3);
    quoted.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    Some(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_backslashes_and_refuse_nul() {
        assert_eq!(literal("abc-123").as_deref(), Some("E'abc-123'"));
        assert_eq!(literal("it's").as_deref(), Some("E'it''s'"));
        assert_eq!(literal(r"a\'b").as_deref(), Some(r"E'a\\''b'"));
        assert_eq!(literal("").as_deref(), Some("E''"));
        assert_eq!(literal("a\0b"), None);
    }

    #[test]
    fn the_lock_timeout_is_whole_milliseconds_of_at_least_one() {
        assert_eq!(
            begin_statement(Duration::from_micros(10)),
            "BEGIN; SET LOCAL lock_timeout = 1"
        );
        assert_eq!(
            begin_statement(Duration::from_secs(905)),
            "BEGIN; SET LOCAL lock_timeout = 905000"
        );
    }
}
