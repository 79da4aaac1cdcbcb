//! A settlement failure stays with its message. When the copy a delivery is
//! settled with (a retry, a hop, a dead letter) cannot be published, the
//! delivery is held, unacked, and the publish tried again with a backoff of
//! its own: its handler does not run again, and the other deliveries and
//! queues go on. A missing delay or dead-letter queue is declared again
//! between tries.
//!
//! The hold is bounded below the broker's `consumer_timeout` (half of it,
//! counted from the delivery), so the broker never closes the channel over a
//! held message. Past the bound, or when the session stops, the delivery is
//! handed back to its queue once, with a log line; a hand-back is not a
//! failed attempt (its `x-eda-attempt` is unchanged).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::dispatch::Dispatch;
use crate::Error;
use crate::broker;
use crate::error::error_chain_text;
use crate::retry::{Backoff, cancelled_within};

/// How long one publish of a held delivery's copy may take: a blocked or
/// black-holed connection answers nothing.
pub(crate) const REPUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopping worker still waits for a try in flight (a healthy
/// broker confirms in milliseconds; a blocked one never does).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The pauses between tries.
const HOLD_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));

/// How long one try may take inside a hold bounded by `limit`.
fn try_timeout(limit: Duration) -> Duration {
    REPUBLISH_TIMEOUT.min(limit / 2)
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Try again after this pause.
    TryAgain(Duration),
    /// Give the delivery back to its queue.
    HandBack,
}

/// After the `tries`-th failed try, `held` into a hold bounded by `limit`.
fn next(tries: u32, held: Duration, limit: Duration, random: f64) -> Next {
    let pause = HOLD_BACKOFF.delay(tries.saturating_sub(1), random);
    // Another try must finish inside the bound too.
    if held + pause + try_timeout(limit) >= limit {
        Next::HandBack
    } else {
        Next::TryAgain(pause)
    }
}

/// Runs `publish` (the copy's publish, `what` naming it in logs) until it is
/// confirmed, holding the delivery received at `received`. `Err` means the
/// delivery is to be handed back to its queue.
pub(super) async fn until_published<T, F, Fut>(
    dispatch: &Dispatch,
    received: Instant,
    what: &str,
    mut publish: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut tries = 0u32;
    loop {
        let timeout = try_timeout(dispatch.hold_limit);
        let published = tokio::select! {
            published = tokio::time::timeout(timeout, publish()) => match published {
                Ok(published) => published,
                Err(_elapsed) => Err(Error::BrokerTimeout {
                    operation: format!("publish of the {what}"),
                    timeout,
                }),
            },
            // A stop does not wait long for a broker that blocks publishers. The
            // copy may still arrive: the message then runs twice, which the inbox
            // (or the job's idempotence) absorbs; it is never lost.
            // A try in flight gets a short grace: a healthy broker confirms it in
            // milliseconds, and a copy confirmed after its original was handed back
            // would run the message twice.
            () = async {
                dispatch.session.cancelled().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => {
                tracing::warn!("the worker stops; handing the message back to its queue unsettled (this is not a failed attempt)");
                return Err(Error::BrokerTimeout {
                    operation: format!("publish of the {what} (stopped)"),
                    timeout,
                });
            }
        };
        let error = match published {
            Ok(value) => {
                if tries > 0 {
                    tracing::info!(
                        tries = tries + 1,
                        "the {what} went out after all; the message is settled"
                    );
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        tries += 1;
        let held = received.elapsed();
        let pause = match next(tries, held, dispatch.hold_limit, fastrand::f64()) {
            Next::TryAgain(pause) => pause,
            Next::HandBack => {
                tracing::error!(error = %error_chain_text(&error), held = ?held, "could not publish the {what}; handing the message back to its queue (this is not a failed attempt)");
                return Err(error);
            }
        };
        if tries == 1 {
            let blocked = dispatch.broker.is_blocked();
            tracing::error!(error = %error_chain_text(&error), retry_in = ?pause, broker_blocks_publishers = blocked, "could not publish the {what}; holding the message and trying again");
        } else {
            tracing::warn!(error = %error_chain_text(&error), tries, retry_in = ?pause, "still cannot publish the {what}");
        }
        if matches!(error, Error::Unroutable { .. }) {
            redeclare(dispatch).await;
        }
        if cancelled_within(pause, &dispatch.session).await {
            tracing::warn!(
                "the worker stops; handing the held message back to its queue (this is not a failed attempt)"
            );
            return Err(error);
        }
    }
}

/// Declares the queue's dead-letter queue and delay queues again (deleted
/// under the worker, say), on the publishing connection.
async fn redeclare(dispatch: &Dispatch) {
    let queue = dispatch.jobs.queue;
    let connection = dispatch.publisher.connection();
    let declared = async {
        broker::declare_dead_letter_queue(connection, queue, dispatch.jobs.queue_type).await?;
        dispatch.delays.declare(connection, queue).await
    }
    .await;
    match declared {
        Ok(()) => tracing::info!(queue, "declared the dead-letter and delay queues again"),
        Err(error) => {
            tracing::warn!(queue, error = %error_chain_text(&error), "could not declare the dead-letter and delay queues again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_HOUR: Duration = Duration::from_secs(30 * 60);

    #[test]
    fn a_held_message_is_tried_again_with_growing_pauses() {
        let Next::TryAgain(first) = next(1, Duration::ZERO, HALF_HOUR / 2, 0.5) else {
            panic!("tries again");
        };
        let Next::TryAgain(later) = next(6, Duration::from_secs(60), HALF_HOUR / 2, 0.5) else {
            panic!("tries again");
        };
        assert_eq!(first, HOLD_BACKOFF.min);
        assert!(later > first && later <= HOLD_BACKOFF.max, "{later:?}");
    }

    #[test]
    fn it_is_handed_back_before_the_bound_would_be_passed() {
        let limit = HALF_HOUR / 2;
        assert_eq!(next(40, limit, limit, 0.5), Next::HandBack);
        assert_eq!(
            next(40, limit - REPUBLISH_TIMEOUT, limit, 0.5),
            Next::HandBack,
            "a try that could end past the bound is not started"
        );
        assert!(matches!(
            next(
                40,
                limit - REPUBLISH_TIMEOUT - HOLD_BACKOFF.max * 2,
                limit,
                0.5
            ),
            Next::TryAgain(_)
        ));
    }

    #[test]
    fn a_short_bound_still_allows_a_try() {
        // A consumer_timeout of 10 s: held at most 5 s, tries of up to 2.5 s.
        let limit = Duration::from_secs(5);
        assert!(matches!(
            next(1, Duration::from_millis(100), limit, 0.5),
            Next::TryAgain(_)
        ));
        assert_eq!(next(3, Duration::from_secs(3), limit, 0.5), Next::HandBack);
    }
}
