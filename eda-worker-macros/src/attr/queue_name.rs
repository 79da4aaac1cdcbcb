//! What a job queue's name may be.

use syn::LitStr;

/// The longest queue name: AMQP allows 255 bytes, and the delay queues append
/// `.delay.` and a TTL of up to 12 characters (`4294967295ms`).
const MAX_QUEUE_NAME: usize = 255 - ".delay.4294967295ms".len();

/// The `queue` option: a name RabbitMQ accepts, with room for the suffixes of
/// the queue's dead-letter and delay queues.
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
    } else {
        return Ok(queue);
    };
    Err(syn::Error::new(lit.span(), message))
}
