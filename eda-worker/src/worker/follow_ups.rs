//! Follow-ups a handler sent without a database (jobs with `ctx.enqueue`,
//! events with `ctx.publish`): published, confirmed, after the handler
//! succeeded and before its message is acked.

use super::decision::Failure;
use super::dispatch::Dispatch;
use crate::Error;
use crate::broker::{self, QueueSpec};
use crate::job::{FollowUp, FollowUps, Target};

/// Whether the handler sent any job or event without a database.
pub(super) fn has_follow_ups(follow_ups: &FollowUps) -> bool {
    !follow_ups
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

/// Publishes, confirmed, what a handler sent without a database, after it
/// succeeded and before its message is acked.
pub(super) async fn publish_follow_ups(
    follow_ups: &FollowUps,
    dispatch: &Dispatch,
) -> Result<(), Failure> {
    let follow_ups = std::mem::take(
        &mut *follow_ups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for follow_up in follow_ups {
        publish(follow_up, dispatch)
            .await
            .map_err(Failure::FollowUp)?;
    }
    Ok(())
}

async fn publish(follow_up: FollowUp, dispatch: &Dispatch) -> Result<(), Error> {
    let message_id = follow_up.envelope.message_id.clone();
    let properties = follow_up.envelope.into_properties()?;
    let connection = dispatch.publisher.connection();
    match follow_up.target {
        Target::Queue { queue, queue_type } => {
            if !is_declared(dispatch, queue) {
                broker::declare_queue(connection, &QueueSpec::job(queue, queue_type)).await?;
                declared(dispatch).insert(queue);
            }
            dispatch
                .publisher
                .publish("", queue, &message_id, &follow_up.body, properties)
                .await
        }
        Target::Exchange {
            exchange,
            kind,
            routing_key,
        } => {
            if !exchange_is_declared(dispatch, exchange, kind) {
                broker::declare_exchange(connection, exchange, kind).await?;
                declared_exchanges(dispatch).insert((exchange, kind));
            }
            let published = dispatch
                .publisher
                .publish_to_declared(
                    exchange,
                    routing_key,
                    &message_id,
                    &follow_up.body,
                    properties,
                )
                .await;
            match published {
                // No subscriber: for an event that is not a failure.
                Err(Error::Unroutable { .. }) => {
                    tracing::info!(
                        exchange,
                        routing_key,
                        event_id = %message_id,
                        "no queue is bound for this event: it was confirmed and dropped"
                    );
                    Ok(())
                }
                Err(error) => {
                    // The exchange may be what is gone: declared again next time.
                    declared_exchanges(dispatch).remove(&(exchange, kind));
                    Err(error)
                }
                Ok(()) => Ok(()),
            }
        }
    }
}

fn declared(
    dispatch: &Dispatch,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<&'static str>> {
    dispatch
        .declared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_declared(dispatch: &Dispatch, queue: &'static str) -> bool {
    declared(dispatch).contains(queue)
}

type DeclaredExchanges = std::collections::HashSet<(&'static str, crate::ExchangeKind)>;

fn declared_exchanges(dispatch: &Dispatch) -> std::sync::MutexGuard<'_, DeclaredExchanges> {
    dispatch
        .declared_exchanges
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exchange_is_declared(
    dispatch: &Dispatch,
    exchange: &'static str,
    kind: crate::ExchangeKind,
) -> bool {
    declared_exchanges(dispatch).contains(&(exchange, kind))
}
