//! What a job queue's name may be.

use syn::LitStr;

/// What a job queue's dead-letter queue adds to its name (`email.dlq`), as
/// `eda_worker` names it.
const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// What a job queue's delay queues add to its name before their TTL
/// (`email.delay.5s`), as `eda_worker` names them.
const DELAY_SUFFIX: &str = ".delay.";

/// The longest queue name: AMQP allows 255 bytes, and the delay queues append
/// `.delay.` and a TTL of up to 12 characters (`4294967295ms`).
const MAX_QUEUE_NAME: usize = 255 - DELAY_SUFFIX.len() - "4294967295ms".len();

/// The `queue` option: a name RabbitMQ accepts, with room for the suffixes of
/// the queue's dead-letter and delay queues, and not itself one of another
/// job queue's.
pub(super) fn queue_name(lit: &LitStr) -> syn::Result<String> {
    let queue = lit.value();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    let message = if queue.is_empty() {
        "queue name must not be empty".to_owned()
    } else if queue.len() > MAX_QUEUE_NAME {
        format!(
            "queue name is {} bytes long; at most {MAX_QUEUE_NAME} fit (`.dlq` and `.delay.<ttl>` are appended)",
            queue.len()
        )
    } else if queue.starts_with("amq.") {
        "queue names starting with `amq.` are reserved by RabbitMQ".to_owned()
    } else if let Some(bad) = queue.chars().find(|&c| !allowed(c)) {
        format!(
            "invalid character {bad:?} in queue name; use letters, digits, `.`, `_`, `-` and `:`"
        )
    } else if let Some(collision) = topology_collision(&queue) {
        collision.message(&queue)
    } else {
        return Ok(queue);
    };
    Err(syn::Error::new(lit.span(), message))
}

/// A queue of another job queue's topology that a name would be.
#[derive(Debug, PartialEq, Eq)]
enum Collision<'a> {
    /// `<owner>.dlq`.
    DeadLetterQueue { owner: &'a str },
    /// `<owner>.delay.<ttl>`.
    DelayQueue { owner: &'a str },
}

impl Collision<'_> {
    fn message(&self, queue: &str) -> String {
        match self {
            Collision::DeadLetterQueue { owner } => format!(
                "queue name `{queue}` collides with the dead-letter queue of `{owner}`; choose a name that does not end in `{DEAD_LETTER_SUFFIX}`"
            ),
            Collision::DelayQueue { owner } => format!(
                "queue name `{queue}` collides with a delay queue of `{owner}`; choose a name that does not end in `{DELAY_SUFFIX}<ttl>`"
            ),
        }
    }
}

/// Which queue of another job queue's topology `queue` would be, if any.
///
/// Every job queue `q` owns `q.dlq` and `q.delay.<ttl>`, so a job queue with
/// such a name would share its messages with another job's dead letters or
/// delayed retries. `eda_worker`'s `Registry` applies the same rule at run
/// time.
fn topology_collision(queue: &str) -> Option<Collision<'_>> {
    if let Some(owner) = queue.strip_suffix(DEAD_LETTER_SUFFIX) {
        return Some(Collision::DeadLetterQueue { owner });
    }
    let (owner, ttl) = queue.rsplit_once(DELAY_SUFFIX)?;
    is_ttl_label(ttl).then_some(Collision::DelayQueue { owner })
}

/// Whether `label` is a delay queue's TTL as `eda_worker` writes it: digits
/// and one unit, `ms`, `s`, `m` or `h` (`100ms`, `5s`, `15m`, `1h`).
fn is_ttl_label(label: &str) -> bool {
    let unit = label.trim_start_matches(|c: char| c.is_ascii_digit());
    unit.len() < label.len() && matches!(unit, "ms" | "s" | "m" | "h")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_queue_name_collides_with_its_owner() {
        assert_eq!(
            topology_collision("email.dlq"),
            Some(Collision::DeadLetterQueue { owner: "email" })
        );
        assert_eq!(
            topology_collision("billing.invoices.dlq"),
            Some(Collision::DeadLetterQueue {
                owner: "billing.invoices"
            })
        );
    }

    #[test]
    fn a_delay_queue_name_collides_with_its_owner() {
        for ttl in ["100ms", "5s", "15m", "1h", "0ms", "4294967295ms"] {
            assert_eq!(
                topology_collision(&format!("email.delay.{ttl}")),
                Some(Collision::DelayQueue { owner: "email" }),
                "{ttl}"
            );
        }
        assert_eq!(
            topology_collision("a.delay.b.delay.5s"),
            Some(Collision::DelayQueue { owner: "a.delay.b" })
        );
    }

    #[test]
    fn names_that_only_look_alike_are_free() {
        for queue in [
            "email",
            "email.dlq-audit",
            "email.dlq.archive",
            "email.DLQ",
            "emaildlq",
            "email.delayed",
            "email.delay",
            "email.delay.",
            "email.delay.5",
            "email.delay.s",
            "email.delay.5d",
            "email.delay.5sec",
            "email.delay.1h30m",
            "email.delay.-5s",
            "email.delay.5s.retry",
        ] {
            assert_eq!(topology_collision(queue), None, "{queue}");
        }
    }

    #[test]
    fn ttl_labels_are_digits_and_one_unit() {
        assert!(is_ttl_label("100ms"));
        assert!(is_ttl_label("1h"));
        assert!(!is_ttl_label("ms"));
        assert!(!is_ttl_label("10"));
        assert!(!is_ttl_label(""));
        assert!(!is_ttl_label("10 s"));
    }

    #[test]
    fn the_messages_say_why_and_what_to_do() {
        assert_eq!(
            Collision::DeadLetterQueue { owner: "email" }.message("email.dlq"),
            "queue name `email.dlq` collides with the dead-letter queue of `email`; choose a name that does not end in `.dlq`"
        );
        assert_eq!(
            Collision::DelayQueue { owner: "email" }.message("email.delay.5s"),
            "queue name `email.delay.5s` collides with a delay queue of `email`; choose a name that does not end in `.delay.<ttl>`"
        );
    }

    #[test]
    fn the_longest_name_leaves_room_for_the_longest_delay_queue() {
        assert_eq!(MAX_QUEUE_NAME, 236);
    }
}
