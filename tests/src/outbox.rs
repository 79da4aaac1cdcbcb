//! Outbox helpers: committing rows, counting what is pending, and a relay
//! running in this process.

use eda_worker::Job;
use eda_worker::outbox::{self, Outbox, Relay};
use eda_worker::postgres::Database;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{WAIT, amqp_url};

/// Commits one outbox row for `job` with `args`.
pub async fn commit_row<J: Job>(
    database: &Database,
    job: J,
    args: J::Args,
) -> eda_worker::MessageId {
    let mut tx = database.pool().begin().await.expect("begin");
    let id = Outbox::in_schema(database.schema().clone())
        .enqueue(&mut tx, job, args)
        .await
        .expect("insert the outbox row");
    tx.commit().await.expect("commit");
    id
}

/// Outbox rows not sent yet.
pub async fn pending(database: &Database) -> i64 {
    outbox::status(database)
        .await
        .expect("outbox status")
        .pending
}

/// A relay running in this process, stopped with its token.
pub struct RunningRelay {
    token: CancellationToken,
    task: JoinHandle<Result<(), eda_worker::Error>>,
}

impl RunningRelay {
    /// Starts a relay of `database`'s outbox to the test broker.
    pub fn start(database: &Database) -> Self {
        Self::start_with(Relay::new(database.clone(), amqp_url()))
    }

    /// Starts `relay`.
    pub fn start_with(relay: Relay) -> Self {
        let token = CancellationToken::new();
        let task = tokio::spawn(relay.run(token.clone()));
        RunningRelay { token, task }
    }

    /// Stops the relay, asserting that it ran without error.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the relay stops in time")
            .expect("relay task")
            .expect("relay result");
    }
}
