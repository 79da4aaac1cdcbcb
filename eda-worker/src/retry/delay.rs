//! Delays without a broker plugin: for each job queue, a small fixed set of
//! delay queues, each with one queue-level TTL, used by retries and by
//! [`Client::enqueue_in`](crate::Client::enqueue_in).
//!
//! A delayed message for job queue `email` is published to `email.delay.5s`,
//! say. It waits there for the queue's TTL; then the broker dead-letters it
//! to the queue's dead-letter routing key, `email`: exactly the queue it came
//! from (a retry of an event handler is not broadcast to the other
//! subscribers again). Every message in one delay queue waits the same time,
//! so a short delay never queues behind a long one; and each job queue has
//! its own delay queues, so nothing one queue does (or a queue deleted while
//! its messages wait) holds up another queue's delays.
//!
//! The message carries its due time in `x-eda-eta`. A delay longer than the
//! largest bucket, or one that falls between buckets, takes several hops: a
//! worker that receives a message before it is due sends it on to the next
//! delay queue without running it, and acks it only once the broker has
//! confirmed the hop. No delayed message is held unacked in a worker.
//!
//! ```
//! use std::time::Duration;
//! use eda_worker::retry::DelayQueues;
//!
//! let delays = DelayQueues::default();
//! assert_eq!(delays.name("email", Duration::from_secs(5)), "email.delay.5s");
//! // A 5 s delay takes the 5 s queue; a 7 s one hops: 5 s, then 2 s.
//! assert_eq!(delays.plan(Duration::from_secs(5)), Duration::from_secs(5));
//! assert_eq!(delays.plan(Duration::from_secs(7)), Duration::from_secs(5));
//! ```

use std::time::Duration;

use lapin::Connection;

use crate::Error;
use crate::broker::{QueueSpec, declare_queue};

/// What a delay queue's name adds to its job queue's: `.delay.` and the TTL.
pub const DELAY_SUFFIX: &str = ".delay.";

/// The delay queues when not configured, from 100 ms to 1 h.
pub const DEFAULT_DELAY_BUCKETS: [Duration; 12] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
];

/// The longest TTL RabbitMQ accepts on a queue (2^32 - 1 ms, about 49 days).
const MAX_TTL_MS: u128 = u32::MAX as u128;

/// The TTLs ("buckets") of the delay queues each job queue gets.
///
/// Clients and workers of one application should use the same set; any
/// worker handles a message from any set, since the due time travels in the
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQueues {
    buckets: Vec<Duration>,
}

impl Default for DelayQueues {
    fn default() -> Self {
        DelayQueues {
            buckets: DEFAULT_DELAY_BUCKETS.to_vec(),
        }
    }
}

impl DelayQueues {
    /// A set of delay queues with these TTLs, named `<queue>.delay.<ttl>`
    /// (`email.delay.1s`).
    ///
    /// Fails on an empty bucket list, or a bucket under 1 ms or over
    /// RabbitMQ's TTL limit (about 49 days).
    pub fn new(buckets: impl IntoIterator<Item = Duration>) -> Result<Self, Error> {
        let mut buckets: Vec<Duration> = buckets.into_iter().collect();
        if buckets.is_empty() {
            return Err(Error::Config("at least one delay bucket is needed".into()));
        }
        for bucket in &buckets {
            if bucket.as_millis() == 0 || bucket.as_millis() > MAX_TTL_MS {
                return Err(Error::Config(format!(
                    "delay bucket {bucket:?} is out of range: RabbitMQ TTLs run from 1 ms to {MAX_TTL_MS} ms"
                )));
            }
        }
        // Whole milliseconds: the unit of a queue TTL.
        for bucket in &mut buckets {
            *bucket = Duration::from_millis(
                u64::try_from(bucket.as_millis()).expect("checked against MAX_TTL_MS above"),
            );
        }
        buckets.sort();
        buckets.dedup();
        Ok(DelayQueues { buckets })
    }

    /// The TTLs, shortest first.
    pub fn buckets(&self) -> &[Duration] {
        &self.buckets
    }

    /// The longest single wait; longer delays hop.
    pub fn largest(&self) -> Duration {
        self.buckets.last().copied().unwrap_or_default()
    }

    fn smallest(&self) -> Duration {
        self.buckets.first().copied().unwrap_or_default()
    }

    /// The name of job queue `queue`'s delay queue with TTL `bucket`.
    pub fn name(&self, queue: &str, bucket: Duration) -> String {
        format!("{queue}{DELAY_SUFFIX}{}", label(bucket))
    }

    /// The bucket for the next hop of a message due in `remaining`.
    ///
    /// The bucket that ends the wait at most one smallest bucket late, if
    /// there is one; otherwise the largest bucket that does not pass the due
    /// time. A message never arrives early, and at most one smallest bucket
    /// (100 ms by default) late, plus the broker's and worker's latency.
    pub fn plan(&self, remaining: Duration) -> Duration {
        let slack = self.smallest();
        if let Some(last_hop) = self
            .buckets
            .iter()
            .find(|bucket| **bucket >= remaining && **bucket - remaining <= slack)
        {
            return *last_hop;
        }
        self.buckets
            .iter()
            .rev()
            .find(|bucket| **bucket <= remaining)
            .copied()
            .unwrap_or(slack)
    }

    /// Declares every delay queue of job queue `queue`.
    pub(crate) async fn declare(&self, connection: &Connection, queue: &str) -> Result<(), Error> {
        for bucket in &self.buckets {
            let spec = QueueSpec::delay(&self.name(queue, *bucket), *bucket, queue);
            declare_queue(connection, &spec).await?;
        }
        Ok(())
    }
}

/// `100ms`, `5s`, `15m`, `1h`: the largest unit that divides the TTL.
fn label(bucket: Duration) -> String {
    let ms = bucket.as_millis();
    match ms {
        0 => "0ms".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Follows the plan hop by hop, as workers do, assuming no latency.
    fn hops(delays: &DelayQueues, delay: Duration) -> Vec<Duration> {
        let mut remaining = delay;
        let mut hops = Vec::new();
        while !remaining.is_zero() {
            let bucket = delays.plan(remaining);
            hops.push(bucket);
            remaining = remaining.saturating_sub(bucket);
        }
        hops
    }

    #[test]
    fn names_use_the_largest_whole_unit() {
        let delays = DelayQueues::default();
        let names: Vec<_> = delays
            .buckets()
            .iter()
            .map(|bucket| delays.name("email", *bucket))
            .collect();
        assert_eq!(names[0], "email.delay.100ms");
        assert_eq!(names[3], "email.delay.1s");
        assert_eq!(names[8], "email.delay.1m");
        assert_eq!(names[11], "email.delay.1h");
        assert_eq!(label(ms(1500)), "1500ms");
    }

    #[test]
    fn a_delay_equal_to_a_bucket_takes_one_hop() {
        let delays = DelayQueues::default();
        for bucket in DEFAULT_DELAY_BUCKETS {
            assert_eq!(hops(&delays, bucket), [bucket]);
        }
    }

    #[test]
    fn no_delay_arrives_early_or_more_than_the_smallest_bucket_late() {
        let delays = DelayQueues::default();
        for delay_ms in (1..20_000)
            .step_by(7)
            .chain([3_599_999, 3_600_001, 86_400_000])
        {
            let delay = ms(delay_ms);
            let total: Duration = hops(&delays, delay).iter().sum();
            assert!(total >= delay, "{delay:?} arrived early after {total:?}");
            assert!(
                total - delay <= ms(100),
                "{delay:?} arrived {:?} late",
                total - delay
            );
        }
    }

    #[test]
    fn a_delay_just_under_a_bucket_rounds_up_instead_of_hopping() {
        let delays = DelayQueues::default();
        assert_eq!(hops(&delays, ms(950)), [ms(1000)]);
        assert_eq!(hops(&delays, ms(4_930)), [ms(5000)]);
    }

    #[test]
    fn delays_beyond_the_largest_bucket_hop_through_it() {
        let delays = DelayQueues::default();
        let day = hops(&delays, Duration::from_secs(24 * 3600));
        assert_eq!(day, vec![Duration::from_secs(3600); 24]);
        let test_set = DelayQueues::new([ms(200), ms(500)]).unwrap();
        assert_eq!(
            hops(&test_set, ms(1700)),
            [ms(500), ms(500), ms(500), ms(200)]
        );
    }

    #[test]
    fn tiny_delays_take_the_smallest_bucket() {
        let delays = DelayQueues::default();
        assert_eq!(delays.plan(ms(1)), ms(100));
        assert_eq!(delays.plan(Duration::ZERO), ms(100));
    }

    #[test]
    fn bad_sets_are_refused_with_the_reason() {
        let error = |result: Result<DelayQueues, Error>| result.unwrap_err().to_string();
        assert!(error(DelayQueues::new([])).contains("at least one"));
        assert!(error(DelayQueues::new([Duration::from_micros(10)])).contains("out of range"));
        assert!(
            error(DelayQueues::new([Duration::from_secs(60 * 86_400)])).contains("out of range")
        );
        let sorted = DelayQueues::new([ms(500), ms(100), ms(500)]).unwrap();
        assert_eq!(sorted.buckets(), [ms(100), ms(500)]);
    }
}
