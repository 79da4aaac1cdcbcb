//! Follow-up jobs a handler enqueued without a database: published,
//! confirmed, after the handler succeeded and before its message is acked.

use super::decision::Failure;
use super::dispatch::Dispatch;
use crate::broker::{self, QueueSpec};
use crate::job::FollowUps;

/// Publishes, confirmed, the jobs a handler enqueued without a database,
/// after it succeeded and before its message is acked.
/// Whether the handler enqueued any job without a database.
pub(super) fn has_follow_ups(follow_ups: &FollowUps) -> bool {
    !follow_ups
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

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
        let published = async {
            let declared = dispatch
                .declared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(follow_up.queue);
            if !declared {
                let spec = QueueSpec::job(follow_up.queue, follow_up.queue_type);
                broker::declare_queue(dispatch.publisher.connection(), &spec).await?;
                dispatch
                    .declared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(follow_up.queue);
            }
            let message_id = follow_up.envelope.message_id.clone();
            let properties = follow_up.envelope.into_properties()?;
            dispatch
                .publisher
                .publish(
                    "",
                    follow_up.queue,
                    &message_id,
                    &follow_up.body,
                    properties,
                )
                .await
        }
        .await;
        published.map_err(Failure::FollowUp)?;
    }
    Ok(())
}
