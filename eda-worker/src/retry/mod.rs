//! Retries: when a failed job runs again ([`Backoff`]), where it waits
//! meanwhile ([`DelayQueues`], TTL queues without a broker plugin), and how
//! a retry or a not-yet-due message gets there (`schedule`).
//!
//! ```
//! use std::time::Duration;
//! use eda_worker::retry::{Backoff, DelayQueues};
//!
//! // A job with `#[job(backoff = "1s..1m")]` waits about 1 s, 2 s, 4 s...
//! let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
//! let delay = backoff.delay(2, 0.5);
//! assert_eq!(delay, Duration::from_secs(4));
//! // ...in the delay queues of its job queue: 4 s is a 2 s hop, then another.
//! let delays = DelayQueues::default();
//! assert_eq!(delays.plan(delay), Duration::from_secs(2));
//! assert_eq!(delays.name("email", Duration::from_secs(2)), "email.delay.2s");
//! ```

mod backoff;
mod delay;
pub(crate) mod schedule;

pub use backoff::{Backoff, DEFAULT_BACKOFF};
pub(crate) use backoff::{Pauses, RECONNECT, cancelled_within};
pub use delay::{DEFAULT_DELAY_BUCKETS, DELAY_SUFFIX, DelayQueues};
