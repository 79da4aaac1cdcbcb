//! The rules a job queue's name follows, checked by the [`Registry`] at
//! start-up for every job (`#[job]` checks the same at compile time; a
//! hand-written [`Job`] impl gets them here).
//!
//! [`Registry`]: crate::Registry
//! [`Job`]: crate::Job

use crate::dead_letter;
use crate::retry::DELAY_SUFFIX;

/// The longest queue name: AMQP allows 255 bytes, and the delay queues
/// append `.delay.` and a TTL of up to 12 characters (`4294967295ms`).
pub const MAX_QUEUE_NAME: usize = 255 - ".delay.4294967295ms".len();

/// Why `queue` cannot be a job queue's name, or `None` when it can: 1 to
/// [`MAX_QUEUE_NAME`] bytes of letters, digits, `.`, `_`, `-` and `:`; not
/// `amq.`-prefixed (reserved by RabbitMQ); and not the name of another job
/// queue's dead-letter queue (`<queue>.dlq`) or delay queue
/// (`<queue>.delay.<ttl>`), which would mix two queues' messages.
pub(crate) fn problem(queue: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if queue.is_empty() {
        return Some("a queue name must not be empty".to_owned());
    }
    if queue.len() > MAX_QUEUE_NAME {
        return Some(format!(
            "it is {} bytes long; at most {MAX_QUEUE_NAME} fit (`.dlq` and `.delay.<ttl>` are appended)",
            queue.len()
        ));
    }
    if queue.starts_with("amq.") {
        return Some("queue names starting with `amq.` are reserved by RabbitMQ".to_owned());
    }
    if let Some(bad) = queue.chars().find(|&c| !allowed(c)) {
        return Some(format!(
            "invalid character {bad:?}; use letters, digits, `.`, `_`, `-` and `:`"
        ));
    }
    if let Some(owner) = queue.strip_suffix(dead_letter::SUFFIX) {
        return Some(format!(
            "it collides with the dead-letter queue of `{owner}`; choose a name that does not end in `{}`",
            dead_letter::SUFFIX
        ));
    }
    if let Some((owner, ttl)) = queue.rsplit_once(DELAY_SUFFIX)
        && is_ttl_label(ttl)
    {
        return Some(format!(
            "it collides with a delay queue of `{owner}`; choose a name that does not end in `{DELAY_SUFFIX}<ttl>`"
        ));
    }
    None
}

/// A delay queue's TTL label: digits and a unit (`100ms`, `5s`, `15m`, `1h`).
fn is_ttl_label(label: &str) -> bool {
    let digits = label.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(&label[digits..], "ms" | "s" | "m" | "h")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_fine() {
        for queue in [
            "email",
            "billing.invoices",
            "eda-test:retries_2",
            "email.dlq-audit",
            "email.delayed",
            "email.delay.soon",
            "email.delay.5",
        ] {
            assert_eq!(problem(queue), None, "{queue}");
        }
        assert_eq!(problem(&"q".repeat(MAX_QUEUE_NAME)), None);
    }

    #[test]
    fn names_of_another_queues_topology_are_refused() {
        assert_eq!(
            problem("email.dlq").as_deref(),
            Some(
                "it collides with the dead-letter queue of `email`; choose a name that does not end in `.dlq`"
            )
        );
        for queue in [
            "email.delay.5s",
            "email.delay.100ms",
            "a.b.delay.1h",
            "x.delay.15m",
        ] {
            let problem = problem(queue).unwrap_or_default();
            assert!(
                problem.contains("collides with a delay queue"),
                "{queue}: {problem}"
            );
        }
    }

    #[test]
    fn malformed_names_are_refused_with_the_reason() {
        assert!(problem("").unwrap().contains("empty"));
        assert!(problem("amq.gen").unwrap().contains("reserved"));
        assert!(
            problem("has space")
                .unwrap()
                .contains("invalid character ' '")
        );
        assert!(
            problem(&"q".repeat(MAX_QUEUE_NAME + 1))
                .unwrap()
                .contains("at most 236")
        );
    }
}
