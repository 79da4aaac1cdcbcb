//! The worker's decisions, as pure functions testable without a broker: may
//! a delivery run ([`admit`]), and what to do with one that did not succeed
//! ([`decide`]: retry or dead-letter).

use std::time::Duration;

use crate::broker::redact_text;
use crate::error::{MAX_ERROR_TEXT, cap_text};
use crate::job::JobDefinition;
use crate::wire::Envelope;
use crate::{Backoff, JobError};

/// What to do with a delivery before any handler runs.
#[derive(Debug)]
pub(crate) enum Admission<'a> {
    /// Run this job.
    Run(&'a JobDefinition),
    /// Not due yet: send it on to a delay queue, due at `eta` (ms since the epoch).
    NotDue { eta: u64 },
    /// It cannot run: settle it as this failure.
    Refuse(Failure),
}

/// What a worker accepts before it runs a job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest body, in bytes.
    pub(crate) max_size: usize,
    /// How far ahead a due time may be: further is taken for a mistake
    /// (a due time in seconds, say) rather than hopping through the delay
    /// queues for centuries.
    pub(crate) eta_horizon: Duration,
}

/// The checks before a job runs, in order: a message over the size limit is
/// refused unread; one due further ahead than the horizon is refused; one due
/// after `now` (ms since the epoch) waits, even for a job this worker does
/// not know (a worker that does may take it later); then its `type` must
/// name a job `lookup` finds on `queue`.
pub(crate) fn admit<'a>(
    size: usize,
    limits: Limits,
    envelope: &Envelope,
    now: u64,
    queue: &'static str,
    lookup: impl FnOnce(Option<&str>) -> Option<&'a JobDefinition>,
) -> Admission<'a> {
    if size > limits.max_size {
        return Admission::Refuse(Failure::TooLarge {
            size,
            limit: limits.max_size,
        });
    }
    if let Some(eta) = envelope.eta.filter(|eta| *eta > now) {
        let horizon_ms = u64::try_from(limits.eta_horizon.as_millis()).unwrap_or(u64::MAX);
        if eta - now > horizon_ms {
            return Admission::Refuse(Failure::TooFarAhead {
                ahead: Duration::from_millis(eta - now),
                horizon: limits.eta_horizon,
            });
        }
        return Admission::NotDue { eta };
    }
    // A queue's raw subscriber takes any message, with a `type` or without.
    let name = envelope.job.as_deref();
    match (lookup(name), name) {
        (Some(job), _) => Admission::Run(job),
        (None, None) => Admission::Refuse(Failure::MissingType),
        (None, Some(name)) => Admission::Refuse(Failure::UnknownJob {
            job: name.to_owned(),
            queue,
        }),
    }
}

/// Why a delivery did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The message has no `type` property: nobody can tell which job it is.
    MissingType,
    /// The `type` names no job consumed from this queue.
    UnknownJob { job: String, queue: &'static str },
    /// The body is not JSON of the job's argument type.
    BadArguments {
        job: &'static str,
        error: serde_json::Error,
    },
    /// The handler returned an error.
    Failed(JobError),
    /// The handler panicked.
    Panicked(String),
    /// The handler ran past its timeout.
    TimedOut(Duration),
    /// The message is larger than the worker accepts.
    TooLarge { size: usize, limit: usize },
    /// The message is due further ahead than the worker accepts.
    TooFarAhead { ahead: Duration, horizon: Duration },
    /// The jobs the handler enqueued could not be published.
    FollowUp(crate::Error),
    /// The handler returned `Ok`, but its transaction could not be committed.
    Uncommitted(&'static str),
    /// A redelivered message started this often without finishing: each
    /// start ended the worker.
    CrashLoop { starts: u32 },
    /// The job's transaction could not begin or commit.
    Database {
        operation: &'static str,
        error: sqlx::Error,
    },
}

impl Failure {
    /// The text for the log and the `x-eda-error` header, with passwords in
    /// URLs redacted, capped.
    pub(crate) fn reason(&self) -> String {
        let text = match self {
            Failure::MissingType => {
                "message has no `type` property; eda-worker needs the job's wire name there"
                    .to_owned()
            }
            Failure::UnknownJob { job, queue } => {
                format!("no job named `{job}` is consumed from queue `{queue}` by this worker")
            }
            Failure::BadArguments { job, error } => {
                format!("body is not valid JSON arguments for job `{job}`: {error}")
            }
            Failure::Failed(error) => error.chain_text(),
            Failure::Panicked(message) => format!("handler panicked: {message}"),
            Failure::TimedOut(timeout) => format!("handler timed out after {timeout:?}"),
            Failure::FollowUp(error) => format!(
                "the handler succeeded, but a job it enqueued could not be published: {}",
                crate::error::error_chain_text(error)
            ),
            Failure::Uncommitted(why) => {
                format!("the handler returned Ok, but its effects were not committed: {why}")
            }
            Failure::Database { operation, error } => {
                format!("PostgreSQL {operation} failed: {error}")
            }
            Failure::CrashLoop { starts } => format!(
                "the job was started {starts} times without finishing: each time the worker died while it ran (an abort, a crash, an out-of-memory kill), so it is not run again (--max-starts)"
            ),
            Failure::TooFarAhead { ahead, horizon } => format!(
                "x-eda-eta is {} ahead, past the horizon of {} (--eta-horizon): a due time that far is taken for a mistake",
                humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                humantime::format_duration(*horizon)
            ),
            Failure::TooLarge { size, limit } => format!(
                "message is {size} bytes, more than the maximum message size of {limit} bytes (--max-message-size)"
            ),
        };
        // A panic message or a job's error may hold a URL with a password.
        let text = redact_text(&text).into_owned();
        cap_text(text, MAX_ERROR_TEXT).into_owned()
    }

    /// Whether another attempt could succeed. A panic or a timeout may be
    /// transient; a message that cannot be decoded or routed never changes.
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Failed(error) => !error.is_permanent(),
            // A database outage passes; a commit that failed rolled back, and the
            // inbox makes a commit that did happen safe to retry.
            Failure::Panicked(_)
            | Failure::TimedOut(_)
            | Failure::Database { .. }
            | Failure::Uncommitted(_)
            | Failure::FollowUp(_) => true,
            Failure::MissingType
            | Failure::UnknownJob { .. }
            | Failure::BadArguments { .. }
            | Failure::TooLarge { .. }
            | Failure::TooFarAhead { .. }
            | Failure::CrashLoop { .. } => false,
        }
    }
}

/// How a job retries: `retries` attempts after the first, `backoff` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
}

/// The worker's answer to a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Publish attempt `attempt` to a delay queue, due after `delay`, then ack.
    Retry { attempt: u32, delay: Duration },
    /// Publish to `<queue>.dlq` with the reason, then ack.
    DeadLetter { why: DeadLetterWhy },
}

/// Why a failure is not retried, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterWhy {
    /// Retrying cannot help: a permanent error or an undecodable message.
    NotRetryable,
    /// The job's retries are spent.
    RetriesSpent,
}

/// Retry or dead-letter? `attempt` is the attempt that failed (0 for the
/// first run); `policy` is the job's, or `None` when the message matched no
/// job; `random` (in `0.0..=1.0`) drives the jitter.
pub(crate) fn decide(
    failure: &Failure,
    attempt: u32,
    policy: Option<RetryPolicy>,
    random: f64,
) -> Decision {
    let Some(policy) = policy.filter(|_| failure.is_retryable()) else {
        return Decision::DeadLetter {
            why: DeadLetterWhy::NotRetryable,
        };
    };
    if attempt >= policy.retries {
        return Decision::DeadLetter {
            why: DeadLetterWhy::RetriesSpent,
        };
    }
    Decision::Retry {
        attempt: attempt + 1,
        delay: policy.backoff.delay(attempt, random),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[job(queue = "decision-test")]
    async fn known(_ctx: JobContext, _args: ()) -> Result<(), JobError> {
        Ok(())
    }

    fn envelope(job: Option<&str>, eta: Option<u64>) -> Envelope {
        Envelope {
            message_id: "m".into(),
            correlation_id: None,
            job: job.map(str::to_owned),
            attempt: 0,
            eta,
        }
    }

    fn admit_one(size: usize, envelope: &Envelope, now: u64) -> Admission<'static> {
        static KNOWN: std::sync::LazyLock<JobDefinition> =
            std::sync::LazyLock::new(|| JobDefinition::of::<known>("t::known"));
        let limits = Limits {
            max_size: 100,
            eta_horizon: Duration::from_secs(10),
        };
        admit(size, limits, envelope, now, "decision-test", |name| {
            (name == Some("known")).then_some(&*KNOWN)
        })
    }

    #[test]
    fn a_known_job_that_is_due_runs() {
        let due = envelope(Some("known"), Some(1_000));
        assert!(matches!(admit_one(100, &due, 1_000), Admission::Run(job) if job.name == "known"));
        assert!(matches!(
            admit_one(10, &envelope(Some("known"), None), 5),
            Admission::Run(_)
        ));
    }

    #[test]
    fn size_is_checked_first_then_the_due_time_then_the_job() {
        let early_unknown = envelope(Some("nope"), Some(2_000));
        assert!(matches!(
            admit_one(101, &early_unknown, 1_000),
            Admission::Refuse(Failure::TooLarge {
                size: 101,
                limit: 100
            })
        ));
        assert!(matches!(
            admit_one(1, &early_unknown, 1_000),
            Admission::NotDue { eta: 2_000 }
        ));
        assert!(matches!(
            admit_one(1, &early_unknown, 2_000),
            Admission::Refuse(Failure::UnknownJob { ref job, queue: "decision-test" }) if job == "nope"
        ));
        assert!(matches!(
            admit_one(1, &envelope(None, None), 0),
            Admission::Refuse(Failure::MissingType)
        ));
    }

    #[test]
    fn a_due_time_past_the_horizon_is_refused_with_the_reason() {
        assert!(matches!(
            admit_one(1, &envelope(Some("known"), Some(11_000)), 1_000),
            Admission::NotDue { eta: 11_000 }
        ));
        let Admission::Refuse(failure) =
            admit_one(1, &envelope(Some("known"), Some(11_001)), 1_000)
        else {
            panic!("a due time 10.001 s ahead is past a 10 s horizon");
        };
        assert_eq!(
            failure.reason(),
            "x-eda-eta is 10s ahead, past the horizon of 10s (--eta-horizon): a due time that far is taken for a mistake"
        );
        assert!(matches!(
            decide(&failure, 0, policy(3), 0.5),
            Decision::DeadLetter {
                why: DeadLetterWhy::NotRetryable
            }
        ));
    }

    #[test]
    fn reasons_name_what_was_wrong() {
        assert!(Failure::MissingType.reason().contains("no `type`"));
        let unknown = Failure::UnknownJob {
            job: "nope".into(),
            queue: "email",
        };
        assert_eq!(
            unknown.reason(),
            "no job named `nope` is consumed from queue `email` by this worker"
        );
        let bad = Failure::BadArguments {
            job: "send_welcome",
            error: serde_json::from_slice::<u8>(b"{").unwrap_err(),
        };
        assert!(
            bad.reason()
                .starts_with("body is not valid JSON arguments for job `send_welcome`: ")
        );
        assert_eq!(
            Failure::TimedOut(Duration::from_secs(2)).reason(),
            "handler timed out after 2s"
        );
        assert_eq!(
            Failure::Panicked("no answer from https://bot:t0ken@api.example/hook".into()).reason(),
            "handler panicked: no answer from https://bot:***@api.example/hook"
        );
    }

    fn policy(retries: u32) -> Option<RetryPolicy> {
        Some(RetryPolicy {
            retries,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        })
    }

    #[test]
    fn transient_failures_retry_with_growing_delays_until_retries_are_spent() {
        let failure = Failure::Failed(JobError::msg("db down"));
        assert_eq!(
            decide(&failure, 0, policy(3), 0.5),
            Decision::Retry {
                attempt: 1,
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            decide(&failure, 2, policy(3), 0.5),
            Decision::Retry {
                attempt: 3,
                delay: Duration::from_secs(4)
            }
        );
        assert_eq!(
            decide(&failure, 3, policy(3), 0.5),
            Decision::DeadLetter {
                why: DeadLetterWhy::RetriesSpent
            }
        );
        assert_eq!(
            decide(&failure, 0, policy(0), 0.5),
            Decision::DeadLetter {
                why: DeadLetterWhy::RetriesSpent
            },
            "retries = 0 runs once"
        );
    }

    #[test]
    fn panics_and_timeouts_are_failed_attempts_that_retry() {
        for failure in [
            Failure::Panicked("boom".into()),
            Failure::TimedOut(Duration::from_secs(1)),
        ] {
            assert!(matches!(
                decide(&failure, 0, policy(1), 0.5),
                Decision::Retry { attempt: 1, .. }
            ));
        }
    }

    #[test]
    fn permanent_errors_and_bad_messages_are_dead_lettered_at_once() {
        let not_retryable = Decision::DeadLetter {
            why: DeadLetterWhy::NotRetryable,
        };
        let failures = [
            Failure::Failed(JobError::permanent("no such user")),
            Failure::MissingType,
            Failure::UnknownJob {
                job: "x".into(),
                queue: "q",
            },
            Failure::BadArguments {
                job: "j",
                error: serde_json::from_slice::<u8>(b"{").unwrap_err(),
            },
            Failure::TooLarge { size: 2, limit: 1 },
            // A crash loop is never retried: it would only crash again.
            Failure::CrashLoop { starts: 5 },
        ];
        for failure in &failures {
            assert_eq!(
                decide(failure, 0, policy(5), 0.5),
                not_retryable,
                "{failure:?}"
            );
        }
        assert_eq!(
            decide(&Failure::Panicked("x".into()), 0, None, 0.5),
            not_retryable,
            "no job, no retry policy"
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        let payload = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "boom 1");
    }
}
