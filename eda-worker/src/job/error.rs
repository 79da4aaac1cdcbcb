//! [`JobError`]: what a handler returns, retryable or permanent.

use std::fmt;

use crate::error::error_chain_text;

/// The error a job handler returns.
///
/// Any `std::error::Error` converts into a *retryable* `JobError` with `?`;
/// wrap it with [`JobError::permanent`] when retrying cannot help (bad input,
/// a record that does not exist). A permanent error goes straight to the
/// dead-letter queue.
///
/// `JobError` itself does not implement `std::error::Error`: that is what lets
/// every error type convert into it (the same trick `anyhow::Error` uses).
pub struct JobError {
    kind: JobErrorKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// Whether retrying a failed job can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobErrorKind {
    /// A transient failure: the job is tried again while it has retries left.
    Retryable,
    /// Retrying cannot help: the job is dead-lettered at once.
    Permanent,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retryable<E>(error: E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        JobError {
            kind: JobErrorKind::Retryable,
            source: error.into(),
        }
    }

    /// A failure that retrying cannot fix: the message is dead-lettered at once.
    pub fn permanent<E>(error: E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        JobError {
            kind: JobErrorKind::Permanent,
            source: error.into(),
        }
    }

    /// A retryable failure described by a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::retryable(message.into())
    }

    /// Whether this failure is retryable or permanent.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        self.kind == JobErrorKind::Permanent
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }

    /// The error and its whole source chain on one line, capped at
    /// [`MAX_ERROR_TEXT`](crate::MAX_ERROR_TEXT) bytes: the text that goes into `x-eda-error`.
    pub fn chain_text(&self) -> String {
        error_chain_text(self.source.as_ref())
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        JobError::retryable(error)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_ERROR_TEXT;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn any_std_error_converts_into_a_retryable_job_error() {
        fn fails() -> Result<(), JobError> {
            Err(std::io::Error::other("disk full"))?;
            Ok(())
        }
        let error = fails().unwrap_err();
        assert_eq!(error.kind(), JobErrorKind::Retryable);
        assert_eq!(error.to_string(), "disk full");
    }

    #[test]
    fn permanent_errors_say_so() {
        assert!(JobError::permanent("no such user").is_permanent());
        assert!(!JobError::msg("try later").is_permanent());
    }

    #[test]
    fn chain_text_joins_sources() {
        let error = JobError::from(Outer(std::io::Error::other("inner")));
        assert_eq!(error.chain_text(), "outer: inner");
    }

    #[test]
    fn chain_text_is_capped_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let text = JobError::msg(long).chain_text();
        assert!(text.len() <= MAX_ERROR_TEXT);
        assert!(text.ends_with("..."));
    }
}
