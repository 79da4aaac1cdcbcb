//! `worker jobs`: the registered jobs and their options.

use super::table::render_table;
use crate::{Registry, Subscription};

pub(super) fn list_jobs() -> Result<(), crate::Error> {
    let registry = Registry::from_linked_jobs()?;
    print!("{}", jobs_table(&registry));
    Ok(())
}

fn jobs_table(registry: &Registry) -> String {
    let rows: Vec<[String; 8]> = registry
        .jobs()
        .map(|job| {
            [
                job.name.to_owned(),
                job.queue.to_owned(),
                job.queue_type.to_string(),
                job.retries.to_string(),
                format!(
                    "{}..{}",
                    humantime::format_duration(job.backoff.min),
                    humantime::format_duration(job.backoff.max)
                ),
                humantime::format_duration(job.timeout).to_string(),
                bindings(&job.subscription),
                job.function_path.to_owned(),
            ]
        })
        .collect();
    let mut table = render_table(
        [
            "JOB", "QUEUE", "TYPE", "RETRIES", "BACKOFF", "TIMEOUT", "BINDINGS", "FUNCTION",
        ],
        &rows,
    );
    if rows.is_empty() {
        table.push_str("(no jobs registered: is the crate with your #[job] functions linked into this binary?)\n");
    }
    table
}

/// A job's bindings: `exchange:key (kind)` for an event's, `exchange:pattern
/// (raw)` for raw ones, `-` for none.
fn bindings(subscription: &Subscription) -> String {
    let bindings: Vec<String> = subscription
        .bindings()
        .iter()
        .map(|binding| match binding.kind {
            Some(kind) => format!("{binding} ({kind})"),
            None => format!("{binding} (raw)"),
        })
        .collect();
    if bindings.is_empty() {
        "-".to_owned()
    } else {
        bindings.join(", ")
    }
}
