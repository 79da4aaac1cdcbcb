//! Opening a connection: bounded attempts with exponential backoff, and a URL
//! that never shows its password in a log line or an error.

use std::time::Duration;

use backon::Retryable;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::Tls;
use crate::Error;
use crate::retry::Backoff;

/// How hard to try before telling the user the broker is unreachable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectPolicy {
    /// Attempts in all (at least 1).
    pub(crate) attempts: usize,
    /// The delays between attempts.
    pub(crate) backoff: Backoff,
    /// How long one attempt (TCP, TLS, AMQP handshake) may take.
    pub(crate) attempt_timeout: Duration,
    /// Retry a refused login or vhost too (a running worker waits them out;
    /// otherwise a refusal ends the attempts at once).
    pub(crate) retry_refusals: bool,
}

impl Default for ConnectPolicy {
    fn default() -> Self {
        ConnectPolicy {
            attempts: 5,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(3)),
            attempt_timeout: Duration::from_secs(10),
            retry_refusals: false,
        }
    }
}

/// One node of the URL, ready to connect to.
struct Node {
    uri: AMQPUri,
    is_tls: bool,
    tls_config: lapin::tcp::OwnedTLSConfig,
    redacted: String,
}

/// A failed attempt on node `index`.
struct NodeFailure {
    index: usize,
    error: lapin::Error,
}

/// Connects to `url` (over TLS for `amqps://`, with `tls`'s files),
/// retrying with the policy's [`Backoff`] (the retry loop is the maintained
/// `backon` crate's) and logging each failed attempt with the password
/// redacted.
///
/// `url` may list a cluster's nodes, as whole URLs separated by commas
/// (see [`addresses`]): each attempt tries them in order and takes the first
/// that answers, so a worker that lost its node reconnects to the next.
pub(crate) async fn connect(
    url: &str,
    tls: &Tls,
    name: &str,
    policy: ConnectPolicy,
) -> Result<Connection, Error> {
    let nodes = addresses(url)
        .into_iter()
        .map(|address| {
            let uri = parse_url(address)?;
            let is_tls = uri.scheme == AMQPScheme::AMQPS;
            Ok(Node {
                // Read on every connect, so that a reconnect picks up rotated files.
                tls_config: tls.load(is_tls)?,
                is_tls,
                uri,
                redacted: redact_url(address),
            })
        })
        .collect::<Result<Vec<Node>, Error>>()?;
    let retries = policy.attempts.max(1) - 1;
    let backoff = policy.backoff.delays().take(retries);
    let several = nodes.len() > 1;
    let mut attempts = 0;
    let connected = (|| {
        attempts += 1;
        let nodes = &nodes;
        async move {
            let mut failure = None;
            for (index, node) in nodes.iter().enumerate() {
                match attempt(node, name, policy.attempt_timeout).await {
                    Ok(connection) => {
                        if several {
                            tracing::info!(node = %node.redacted, "connected to RabbitMQ");
                        }
                        return Ok(connection);
                    }
                    Err(error) => {
                        if several && index + 1 < nodes.len() {
                            tracing::warn!(node = %node.redacted, error = %error, "cannot connect to this RabbitMQ node; trying the next");
                        }
                        failure = Some(NodeFailure { index, error });
                    }
                }
            }
            Err(failure.expect("a URL has at least one node"))
        }
    })
    .retry(backoff)
    // Wrong credentials, a missing vhost or an untrusted certificate do not
    // get better by waiting (unless the policy says they may).
    .when(|failed: &NodeFailure| {
        let is_tls = nodes[failed.index].is_tls;
        policy.retry_refusals
            || !(is_refusal(&failed.error) || tls_failure(is_tls, &failed.error).is_some())
    })
    .notify(|failed: &NodeFailure, delay: Duration| {
        let node = &nodes[failed.index];
        tracing::warn!(url = %node.redacted, error = %failed.error, retry_in = ?delay, "cannot connect to RabbitMQ, retrying");
    })
    .await;
    connected.map_err(|failed| {
        let node = &nodes[failed.index];
        match tls_failure(node.is_tls, &failed.error) {
            Some(reason) => Error::Tls {
                url: node.redacted.clone(),
                host: node.uri.authority.host.clone(),
                reason,
            },
            None => Error::Connect {
                url: redact_url(url),
                attempts,
                source: failed.error,
            },
        }
    })
}

/// One connection attempt to `node`, bounded by `timeout`.
async fn attempt(node: &Node, name: &str, timeout: Duration) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_uri_with_config(
            node.uri.clone(),
            properties,
            node.tls_config.clone(),
            runtime,
        )
        .await
    };
    // A black-holed host would otherwise hold each attempt for the OS's SYN timeout.
    match tokio::time::timeout(timeout, connecting).await {
        Ok(connected) => connected,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )
        .into()),
    }
}

/// The nodes of an AMQP URL: one URL, or a cluster's nodes as whole URLs
/// separated by commas (`amqp://u:p@rabbit-1/%2f,amqp://u:p@rabbit-2/%2f`).
/// A comma starts a new node only before `amqp://` or `amqps://`, so a raw
/// comma in a password stays in it.
pub(crate) fn addresses(url: &str) -> Vec<&str> {
    let starts_node = |rest: &str| {
        let rest = rest.trim_start().as_bytes();
        [b"amqp://".as_slice(), b"amqps://".as_slice()]
            .iter()
            .any(|scheme| {
                rest.len() >= scheme.len() && rest[..scheme.len()].eq_ignore_ascii_case(scheme)
            })
    };
    let mut nodes = Vec::new();
    let mut start = 0;
    for (comma, _) in url.match_indices(',') {
        if starts_node(&url[comma + 1..]) {
            nodes.push(url[start..comma].trim());
            start = comma + 1;
        }
    }
    nodes.push(url[start..].trim());
    nodes
}

/// Parses the URL up front, so that a malformed one is reported as such (and
/// never echoed with its password).
fn parse_url(url: &str) -> Result<AMQPUri, Error> {
    url.parse::<AMQPUri>().map_err(|reason| {
        let redacted = redact_url(url);
        let mut reason = reason.replace(url, &redacted);
        if let Some(password) = password_of(url) {
            reason = reason.replace(password, "***");
        }
        Error::InvalidUrl {
            url: redacted,
            reason,
        }
    })
}

/// What TLS reported, when `error` is a failed handshake of a TLS connection
/// rather than a refused or unreachable TCP connection.
fn tls_failure(is_tls: bool, error: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::IOError(io) = error.kind() else {
        return None;
    };
    (is_tls && io.kind() == std::io::ErrorKind::InvalidData).then(|| io.to_string())
}

/// The broker refused the login or the vhost.
fn is_refusal(error: &lapin::Error) -> bool {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return false;
    };
    matches!(
        amqp.kind(),
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
    )
}

/// Byte range of the password in `url`, if it has one.
///
/// The userinfo ends at the *last* `@` after the scheme, whatever comes
/// before it: a password may hold a raw `/`, `?` or `#` (base64 ones do),
/// and redacting too much of an odd path is harmless where too little leaks.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let userinfo = &url[authority_start..authority_start + url[authority_start..].rfind('@')?];
    let colon = userinfo.find(':')?;
    let start = authority_start + colon + 1;
    let end = authority_start + userinfo.len();
    (end > start).then_some((start, end))
}

fn password_of(url: &str) -> Option<&str> {
    password_span(url).map(|(start, end)| &url[start..end])
}

/// The URL with its password replaced by `***`, for logs and errors: the
/// one in the userinfo, and a `password` or `sslpassword` query parameter
/// (which PostgreSQL URLs accept).
///
/// ```
/// assert_eq!(
///     eda_worker::redact_url("amqp://guest:s3cret@rabbit:5672/%2f"),
///     "amqp://guest:***@rabbit:5672/%2f",
/// );
/// assert_eq!(
///     eda_worker::redact_url("postgres://app@db/app?password=s3cret&sslmode=require"),
///     "postgres://app@db/app?password=***&sslmode=require",
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let nodes = addresses(url);
    if nodes.len() > 1 {
        return nodes
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    if !url.contains("://") {
        // Not a URL we understand: it may be a password pasted by mistake.
        return "<unparseable URL>".to_owned();
    }
    let url = match password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    };
    redact_query_passwords(&url)
}

/// `text` (an error message, a log line) with the password of every URL in
/// it redacted as [`redact_url`] does; URLs are the words holding `://`.
pub(crate) fn redact_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut redacted = String::with_capacity(text.len());
    for piece in text.split_inclusive(char::is_whitespace) {
        let (word, space) = piece.split_at(piece.trim_end().len());
        if word.contains("://") {
            redacted.push_str(&redact_url(word));
        } else {
            redacted.push_str(word);
        }
        redacted.push_str(space);
    }
    std::borrow::Cow::Owned(redacted)
}

/// Replaces the values of `password` and `sslpassword` query parameters,
/// wherever a `?` or `&` starts one (a value may hold `@`, `/` or `?`).
fn redact_query_passwords(url: &str) -> String {
    let mut redacted = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find(['?', '&']) {
        let (before, from) = rest.split_at(at + 1);
        redacted.push_str(before);
        rest = from;
        let key_len = ["password=", "sslpassword="].iter().find_map(|key| {
            rest.get(..key.len())
                .filter(|start| start.eq_ignore_ascii_case(key))
                .map(|_| key.len())
        });
        if let Some(key_len) = key_len {
            redacted.push_str(&rest[..key_len]);
            redacted.push_str("***");
            let value_end = rest[key_len..]
                .find(['&', '#'])
                .map_or(rest.len(), |end| key_len + end);
            rest = &rest[value_end..];
        }
    }
    redacted.push_str(rest);
    redacted
}

#[cfg(test)]
mod tests {
    use super::{addresses, redact_url};

    #[test]
    fn password_query_parameters_are_redacted() {
        assert_eq!(
            redact_url("postgres://db/app?sslmode=require&PASSWORD=x%26y&sslpassword=k"),
            "postgres://db/app?sslmode=require&PASSWORD=***&sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://u:p?w@db/app?password=z"),
            "postgres://u:***@db/app?password=***"
        );
        assert_eq!(
            redact_url("postgres://db/app?application_name=a"),
            "postgres://db/app?application_name=a"
        );
        assert_eq!(
            redact_url("postgres://app@db/app?password=p@ss"),
            "postgres://app@db/app?password=***"
        );
        assert_eq!(
            redact_url("postgres://db/app?password=x&application_name=svc@host#f"),
            "postgres://db/app?password=***&application_name=svc@host#f"
        );
    }

    #[test]
    fn a_list_of_nodes_is_split_before_each_url_and_each_password_redacted() {
        let list = "amqp://u:p1@rabbit-1:5672/%2f, amqps://u:p,2@rabbit-2/%2f,AMQP://rabbit-3";
        assert_eq!(
            addresses(list),
            [
                "amqp://u:p1@rabbit-1:5672/%2f",
                "amqps://u:p,2@rabbit-2/%2f",
                "AMQP://rabbit-3"
            ]
        );
        assert_eq!(addresses("amqp://u:a,b@h/%2f"), ["amqp://u:a,b@h/%2f"]);
        assert_eq!(
            redact_url(list),
            "amqp://u:***@rabbit-1:5672/%2f,amqps://u:***@rabbit-2/%2f,AMQP://rabbit-3"
        );
    }

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
    fn passwords_with_url_delimiters_are_redacted() {
        for url in [
            "amqp://u:pa/ss@host/vhost",
            "amqp://u:12#w@host:5672/%2f",
            "amqp://u:a?b@host",
            "amqp://u:x/y+z==@rabbit.internal/prod",
        ] {
            let redacted = redact_url(url);
            assert!(redacted.starts_with("amqp://u:***@"), "{url} -> {redacted}");
            for secret in ["pa/ss", "12#w", "a?b", "x/y+z=="] {
                assert!(!redacted.contains(secret), "{url} -> {redacted}");
            }
        }
        let error = super::parse_url("amqp://u:pa/ss@host/vhost")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("pa/ss"), "{error}");
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
    fn a_malformed_url_is_reported_without_its_password() {
        let error = super::parse_url("amqp://guest:hunter2@127.0.0.1:notaport/%2f").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("invalid AMQP URL `amqp://guest:***@127.0.0.1:notaport/%2f`"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let scheme = super::parse_url("http://guest:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(
            scheme.contains("http") && !scheme.contains("hunter2"),
            "{scheme}"
        );
    }

    #[test]
    fn passwords_in_free_text_are_redacted_and_the_rest_kept() {
        use super::redact_text;
        assert_eq!(
            redact_text("GET https://user:secret@host/x failed:\n\ttimeout"),
            "GET https://user:***@host/x failed:\n\ttimeout"
        );
        assert_eq!(
            redact_text("(\"postgres://app@db/app?password=p&x=1\") and amqp://g:h@r/v."),
            "(\"postgres://app@db/app?password=***&x=1\") and amqp://g:***@r/v."
        );
        assert_eq!(redact_text("no urls here: a:b@c"), "no urls here: a:b@c");
        assert_eq!(
            redact_text("see https://example.com/docs"),
            "see https://example.com/docs"
        );
    }

    #[test]
    fn garbage_is_not_echoed() {
        assert_eq!(redact_url("hunter2"), "<unparseable URL>");
    }
}
