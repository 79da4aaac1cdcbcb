//! How the relay publishes a batch: rows due now for the default exchange
//! or an event's exchange (declared first) pipelined, the others (another
//! named exchange, a scheduled row) each alone on its channel; and what
//! each result means for its row.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Mutex;
use tokio::time::error::Elapsed;

use super::Relay;
use super::batch::{OutboxRow, Sent};
use crate::broker::{self, Outgoing, Publisher, QueueSpec};
use crate::retry::schedule::publish_delayed;
use crate::{Error, ExchangeKind};

/// How long a row's publish may wait for its confirm (a broker that blocks
/// publishers under a memory or disk alarm sends none); past it the row is
/// left for a later pass, uncharged.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How a row of a batch goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Pipelined with the batch's other such rows on one channel.
    Pipelined,
    /// Alone: by itself on its channel (a named exchange), or through delay queues.
    Alone,
}

/// The default exchange always exists, and so does an event's, which the
/// relay declares before publishing the row. A publish to a missing named
/// exchange closes its channel, which must not take the rest of the batch
/// with it, so the rows of other named exchanges go alone (the publisher
/// sends each alone on its channel), as do scheduled rows (through their
/// delay queues).
fn route(exchange: &str, declared: bool, scheduled: bool) -> Route {
    if (exchange.is_empty() || declared) && !scheduled {
        Route::Pipelined
    } else {
        Route::Alone
    }
}

/// The results of a pipelined batch that count against their rows, in
/// order; `None` for one that is not its row's fault. A refusal of the
/// message itself (unroutable, nacked) always counts. A channel error (say,
/// a message the broker refuses as too large) fails every later publish of
/// the batch: only the first counts, the rest are left for the next pass.
fn charged(results: Vec<Result<(), Error>>) -> Vec<Option<Result<(), Error>>> {
    let mut channel_failed = false;
    results
        .into_iter()
        .map(|result| match result {
            Ok(()) | Err(Error::Unroutable { .. } | Error::Nacked { .. }) => Some(result),
            Err(_) if channel_failed => None,
            Err(error) => {
                channel_failed = true;
                Some(Err(error))
            }
        })
        .collect()
}

impl Relay {
    /// Publishes a batch: the rows due now for the default exchange
    /// pipelined, the others one by one; each settled within
    /// [`CONFIRM_TIMEOUT`]. One result per row, in order.
    pub(super) async fn publish_rows(
        &self,
        publisher: &Publisher,
        declared: &Mutex<HashSet<String>>,
        rows: &[OutboxRow],
    ) -> Vec<Sent> {
        let mut results: Vec<Option<Sent>> = rows.iter().map(|_| None).collect();
        let mut now = Vec::new();
        let mut now_rows = Vec::new();
        let mut alone = Vec::new();
        for (index, row) in rows.iter().enumerate() {
            let prepared = async {
                let (envelope, eta) = row.envelope();
                self.declare(publisher, declared, row, eta.is_some())
                    .await?;
                Ok::<_, Error>((envelope.into_properties()?, eta))
            }
            .await;
            match prepared {
                Ok((properties, eta))
                    if route(&row.exchange, row.exchange_kind.is_some(), eta.is_some())
                        == Route::Alone =>
                {
                    alone.push((index, properties, eta));
                }
                Ok((properties, _)) => {
                    now.push(Outgoing {
                        exchange: row.exchange.clone(),
                        routing_key: row.routing_key.clone(),
                        message_id: row.message_id.to_string(),
                        body: row.body.clone(),
                        properties,
                        exchange_declared: row.exchange_kind.is_some(),
                    });
                    now_rows.push(index);
                }
                Err(error) => {
                    results[index] = Some(settle(publisher, declared, row, Ok(Err(error))).await);
                }
            }
        }
        let pipelined = tokio::time::timeout(CONFIRM_TIMEOUT, publisher.publish_batch(&now));
        let alone = join_all(
            alone
                .into_iter()
                .map(|(index, properties, eta)| async move {
                    let row = &rows[index];
                    let published = tokio::time::timeout(
                        CONFIRM_TIMEOUT,
                        self.publish_alone(publisher, row, properties, eta),
                    )
                    .await;
                    (index, settle(publisher, declared, row, published).await)
                }),
        );
        let (pipelined, alone) = tokio::join!(pipelined, alone);
        match pipelined {
            Ok(published) => {
                for (index, published) in now_rows.into_iter().zip(charged(published)) {
                    results[index] = Some(match published {
                        Some(published) => {
                            settle(publisher, declared, &rows[index], Ok(published)).await
                        }
                        None => Sent::Unsettled,
                    });
                }
            }
            Err(_elapsed) => {
                for index in now_rows {
                    results[index] = Some(Sent::Unsettled);
                }
            }
        }
        for (index, sent) in alone {
            results[index] = Some(sent);
        }
        results
            .into_iter()
            .map(|sent| sent.unwrap_or(Sent::Unsettled))
            .collect()
    }

    /// Publishes one row alone: to its named exchange, or
    /// (scheduled for a job queue) through the queue's delay queues.
    async fn publish_alone(
        &self,
        publisher: &Publisher,
        row: &OutboxRow,
        properties: lapin::BasicProperties,
        eta: Option<u64>,
    ) -> Result<(), Error> {
        let message_id = row.message_id.to_string();
        match eta {
            // A scheduled row for a named exchange goes there at once: its
            // consumer holds it back until it is due.
            Some(eta) if row.exchange.is_empty() => publish_delayed(
                &self.delays,
                publisher,
                &row.routing_key,
                &message_id,
                &row.body,
                properties,
                eta,
            )
            .await
            .map(|_bucket| ()),
            _ => {
                publisher
                    .publish(
                        &row.exchange,
                        &row.routing_key,
                        &message_id,
                        &row.body,
                        properties,
                    )
                    .await
            }
        }
    }

    /// Declares the queue of a row for the default exchange (and its delay
    /// queues when it is scheduled), or the exchange of an event row, once
    /// per relay session.
    async fn declare(
        &self,
        publisher: &Publisher,
        declared: &Mutex<HashSet<String>>,
        row: &OutboxRow,
        scheduled: bool,
    ) -> Result<(), Error> {
        if let Some(kind) = row.exchange_kind {
            let key = exchange_key(&row.exchange, kind);
            if !declared.lock().await.contains(&key) {
                broker::declare_exchange(publisher.connection(), &row.exchange, kind).await?;
                declared.lock().await.insert(key);
            }
            return Ok(());
        }
        if !row.exchange.is_empty() {
            return Ok(());
        }
        let queue = &row.routing_key;
        let key = declared_key(queue, scheduled);
        if declared.lock().await.contains(&key) {
            return Ok(());
        }
        broker::declare_queue(
            publisher.connection(),
            &QueueSpec::job(queue, row.queue_type),
        )
        .await?;
        if scheduled {
            self.delays.declare(publisher.connection(), queue).await?;
        }
        declared.lock().await.insert(key);
        Ok(())
    }
}

/// What became of a row whose publish returned `published` (an error for a
/// confirm that did not come in time).
async fn settle(
    publisher: &Publisher,
    declared: &Mutex<HashSet<String>>,
    row: &OutboxRow,
    published: Result<Result<(), Error>, Elapsed>,
) -> Sent {
    let published = match published {
        // No subscriber: for an event that is not a failure.
        Ok(Err(Error::Unroutable { .. })) if !row.exchange.is_empty() => {
            tracing::info!(
                row = row.id,
                message_id = %row.message_id,
                exchange = %row.exchange,
                routing_key = %row.routing_key,
                "no queue is bound for this event: it was confirmed and its row is deleted"
            );
            Ok(Ok(()))
        }
        published => published,
    };
    if matches!(published, Ok(Err(_))) {
        // Its queue or exchange may be gone: declared again on the next try.
        forget_declared(declared, row).await;
    }
    verdict(published, publisher.is_usable())
}

/// What became of a row whose publish returned `published`, the connection
/// being up or not: a refusal is charged to the row, but a lost connection
/// or a confirm that did not come in time is not the row's fault.
fn verdict(published: Result<Result<(), Error>, Elapsed>, connected: bool) -> Sent {
    match published {
        Ok(Ok(())) => Sent::Confirmed,
        Ok(Err(error)) if connected => Sent::Refused(error),
        Ok(Err(_)) | Err(_) => Sent::Unsettled,
    }
}

/// Forgets that `row`'s queues were declared, so that the next publish to
/// them declares them again (a queue deleted while the relay runs).
async fn forget_declared(declared: &Mutex<HashSet<String>>, row: &OutboxRow) {
    if let Some(kind) = row.exchange_kind {
        declared
            .lock()
            .await
            .remove(&exchange_key(&row.exchange, kind));
    }
    if row.exchange.is_empty() {
        let mut declared = declared.lock().await;
        declared.remove(&declared_key(&row.routing_key, false));
        declared.remove(&declared_key(&row.routing_key, true));
    }
}

/// What the relay remembers of a declared event exchange.
fn exchange_key(exchange: &str, kind: ExchangeKind) -> String {
    format!("exchange {exchange} ({kind})")
}

/// What the relay remembers of a declared job queue (with its delay queues
/// when `scheduled`).
pub(super) fn declared_key(queue: &str, scheduled: bool) -> String {
    if scheduled {
        format!("{queue} +delays")
    } else {
        queue.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nacked() -> Error {
        Error::Nacked {
            message_id: "m".into(),
            routing_key: "q".into(),
        }
    }

    fn channel_closed() -> Error {
        Error::Config("channel closed".into())
    }

    #[test]
    fn rows_due_now_for_the_default_or_a_declared_exchange_are_pipelined() {
        assert_eq!(route("", false, false), Route::Pipelined);
        assert_eq!(route("", false, true), Route::Alone);
        assert_eq!(route("orders", false, false), Route::Alone);
        assert_eq!(route("orders", false, true), Route::Alone);
        // An event's exchange, declared by the relay.
        assert_eq!(route("orders", true, false), Route::Pipelined);
    }

    #[test]
    fn a_channel_error_is_charged_to_the_first_row_only() {
        let verdicts = charged(vec![
            Ok(()),
            Err(nacked()),
            Err(channel_closed()),
            Err(channel_closed()),
            Err(nacked()),
        ]);
        let shape: Vec<&str> = verdicts
            .iter()
            .map(|verdict| match verdict {
                Some(Ok(())) => "ok",
                Some(Err(Error::Nacked { .. })) => "nacked",
                Some(Err(_)) => "charged",
                None => "left",
            })
            .collect();
        assert_eq!(shape, ["ok", "nacked", "charged", "left", "nacked"]);
    }

    #[tokio::test]
    async fn refusals_count_only_while_the_connection_is_up() {
        assert!(matches!(verdict(Ok(Ok(())), true), Sent::Confirmed));
        assert!(matches!(verdict(Ok(Err(nacked())), true), Sent::Refused(_)));
        assert!(matches!(verdict(Ok(Err(nacked())), false), Sent::Unsettled));
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(matches!(verdict(Err(elapsed), true), Sent::Unsettled));
    }
}
