//! Opening a connection: bounded attempts with exponential backoff, and a URL
//! that never shows its password in a log line or an error.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties};

use crate::Error;

/// How hard to try before telling the user the broker is unreachable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectPolicy {
    /// Attempts in all (at least 1).
    pub(crate) attempts: usize,
    /// Delay before the second attempt; doubles up to `max_delay`.
    pub(crate) min_delay: Duration,
    /// Longest delay between two attempts.
    pub(crate) max_delay: Duration,
}

impl Default for ConnectPolicy {
    fn default() -> Self {
        ConnectPolicy {
            attempts: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
        }
    }
}

/// Connects to `url`, retrying with backoff (the maintained `backon` crate)
/// and logging each failed attempt with the password redacted.
pub(crate) async fn connect(
    url: &str,
    name: &str,
    policy: ConnectPolicy,
) -> Result<Connection, Error> {
    let redacted = redact_url(url);
    let retries = policy.attempts.max(1) - 1;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(retries)
        .with_jitter();
    let properties = || ConnectionProperties::default().with_connection_name(name.into());
    (|| Connection::connect(url, properties()))
        .retry(backoff)
        .notify(|error: &lapin::Error, delay: Duration| {
            tracing::warn!(url = %redacted, error = %error, retry_in = ?delay, "cannot reach RabbitMQ, retrying");
        })
        .await
        .map_err(|source| connect_error(url, policy.attempts.max(1), source))
}

fn connect_error(url: &str, attempts: usize, source: lapin::Error) -> Error {
    let redacted = redact_url(url);
    if let lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::IOError(_) = source.kind()
        && !url.contains("://")
    {
        return Error::InvalidUrl {
            url: redacted,
            reason: "expected amqp://user:password@host:port/vhost".into(),
        };
    }
    Error::Connect {
        url: redacted,
        attempts,
        source,
    }
}

/// The URL with its password replaced by `***`, for logs and errors.
///
/// ```
/// assert_eq!(
///     eda_worker::redact_url("amqp://guest:s3cret@rabbit:5672/%2f"),
///     "amqp://guest:***@rabbit:5672/%2f",
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL we understand: it may be a password pasted by mistake.
        return "<unparseable URL>".to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn password_with_at_sign_and_slash_is_redacted() {
        assert_eq!(
            redact_url("amqps://u:p%40ss@host/vhost"),
            "amqps://u:***@host/vhost"
        );
        assert_eq!(redact_url("amqp://u:a@b@host:1/v"), "amqp://u:***@host:1/v");
    }

    #[test]
    fn urls_without_password_are_unchanged() {
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
    }

    #[test]
    fn garbage_is_not_echoed() {
        assert_eq!(redact_url("hunter2"), "<unparseable URL>");
    }
}
