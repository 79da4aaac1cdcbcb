//! What the worker does with a delivery that did not succeed: a pure function
//! of the failure and the message, testable without a broker.

use std::time::Duration;

use crate::JobError;
use crate::error::{MAX_ERROR_TEXT, cap_text};

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
}

impl Failure {
    /// The text for the log and the `x-eda-error` header, capped.
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
        };
        cap_text(text, MAX_ERROR_TEXT).into_owned()
    }
}

/// The worker's answer to a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Publish to `<queue>.dlq` with the reason, then ack.
    DeadLetter,
}

/// Until delayed retries exist, every failure is dead-lettered at once, so
/// that nothing is dropped and nothing loops on a requeue.
pub(crate) fn decide(_failure: &Failure) -> Decision {
    Decision::DeadLetter
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
    }

    #[test]
    fn every_failure_is_dead_lettered_for_now() {
        assert_eq!(decide(&Failure::Panicked("x".into())), Decision::DeadLetter);
        assert_eq!(
            decide(&Failure::Failed(JobError::msg("x"))),
            Decision::DeadLetter
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        let payload = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(payload.as_ref()), "boom 1");
    }
}
