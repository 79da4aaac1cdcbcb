//! The one backoff of eda-worker: exponential with jitter between two bounds.
//! It spaces a failed job's retries (`#[job(backoff = "1s..10m")]`), a
//! failing outbox row's next tries, connection attempts (through `backon`,
//! as an iterator of delays) and the pauses of the reconnect loops.
//!
//! The schedule is a pure function of the attempt and a random number, so it
//! is tested without clocks or a broker:
//!
//! ```
//! use std::time::Duration;
//! use eda_worker::Backoff;
//!
//! let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
//! // The first retry waits about 1 s, the second about 2 s, the third about 4 s...
//! assert_eq!(backoff.delay(0, 0.5), Duration::from_secs(1));
//! assert_eq!(backoff.delay(2, 0.5), Duration::from_secs(4));
//! // ...never more than the upper bound.
//! assert_eq!(backoff.delay(30, 1.0), Duration::from_secs(60));
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The share of a delay that jitter may add or take away (± 25 %), so that
/// jobs that failed together do not all come back at the same instant.
pub(crate) const JITTER: f64 = 0.25;

/// Exponential backoff between two bounds: a job's retry delays
/// (`#[job(backoff = "1s..10m")]`), and eda-worker's own waits between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (before jitter), and the shortest.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

/// The backoff of a `#[job]` without a `backoff` option: 5 s, doubling, at most 10 min.
pub const DEFAULT_BACKOFF: Backoff = Backoff {
    min: Duration::from_secs(5),
    max: Duration::from_secs(10 * 60),
};

impl Default for Backoff {
    fn default() -> Self {
        DEFAULT_BACKOFF
    }
}

impl Backoff {
    /// Delays from `min`, doubling per retry, capped at `max` (taken as `min`
    /// when smaller).
    pub const fn new(min: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < min.as_nanos() {
            min
        } else {
            max
        };
        Backoff { min, max }
    }

    /// The delay before retry number `retry + 1`, i.e. after failed attempt
    /// `retry` (0 for the first run).
    ///
    /// `min × 2^retry`, times a jitter factor between 0.75 and 1.25 taken from
    /// `random` (in `0.0..=1.0`), clamped into `min..=max`.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        // 2^64 is far past any sensible max: stop doubling there.
        let doublings = i32::try_from(retry.min(64)).unwrap_or(64);
        let exponential = self.min.as_secs_f64() * 2f64.powi(doublings);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let jittered = exponential * (1.0 - JITTER + 2.0 * JITTER * random);
        // `max` below `min` (fields set by hand, not through `new`) means `min`.
        let max = self.max.max(self.min);
        let bounded = jittered.clamp(self.min.as_secs_f64(), max.as_secs_f64());
        // Whole milliseconds: the broker's TTLs are in milliseconds anyway.
        Duration::from_millis((bounded * 1000.0).round() as u64)
    }

    /// [`Backoff::delay`] with a fresh random number.
    pub fn delay_now(&self, retry: u32) -> Duration {
        self.delay(retry, fastrand::f64())
    }

    /// The delays before the second, third... try, with fresh jitter each:
    /// an endless iterator, which `backon` takes as its schedule.
    pub(crate) fn delays(self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        (0..=u32::MAX).map(move |retry| self.delay_now(retry))
    }
}

/// The pauses of a loop that tries again until it succeeds or is stopped
/// (a reconnect loop): the delays of a [`Backoff`] in turn, from its
/// minimum again after [`Pauses::reset`].
#[derive(Debug, Clone)]
pub(crate) struct Pauses {
    backoff: Backoff,
    failures: u32,
}

impl Pauses {
    pub(crate) const fn new(backoff: Backoff) -> Self {
        Pauses {
            backoff,
            failures: 0,
        }
    }

    /// The pause after one more failure.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.backoff.delay_now(self.failures);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// After a success: the next pause is the shortest again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The pause after a session that failed once it had `lived`: from the
    /// shortest again after a session that lived `healthy` or longer, the
    /// next longer one after a session that died early.
    pub(crate) fn after_session(&mut self, lived: Duration, healthy: Duration) -> Duration {
        if lived >= healthy {
            self.reset();
        }
        self.next_pause()
    }
}

/// The pauses between two broker sessions of the worker and of the outbox
/// relay: from 100 ms (a connection a load balancer or a failover dropped
/// comes back at once), doubling, at most 30 s.
pub(crate) const RECONNECT: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(30),
};

/// Waits up to `pause` for `token`; true when it was cancelled meanwhile.
pub(crate) async fn cancelled_within(pause: Duration, token: &CancellationToken) -> bool {
    tokio::time::timeout(pause, token.cancelled()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_per_retry_without_jitter() {
        let backoff = Backoff::new(SECOND, Duration::from_secs(3600));
        let delays: Vec<_> = (0..5).map(|retry| backoff.delay(retry, 0.5)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
            "random 0.5 is the midpoint of the jitter"
        );
    }

    #[test]
    fn jitter_spreads_a_quarter_either_way_inside_the_bounds() {
        let backoff = Backoff::new(SECOND, Duration::from_secs(3600));
        assert_eq!(backoff.delay(2, 0.0), Duration::from_secs(3));
        assert_eq!(backoff.delay(2, 1.0), Duration::from_secs(5));
        // Never below the minimum, even when jitter would take it there.
        assert_eq!(backoff.delay(0, 0.0), SECOND);
        assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(1250));
    }

    #[test]
    fn delays_stop_growing_at_the_maximum() {
        let backoff = Backoff::new(SECOND, Duration::from_secs(10));
        assert_eq!(backoff.delay(3, 0.5), Duration::from_secs(8));
        assert_eq!(backoff.delay(4, 0.5), Duration::from_secs(10));
        assert_eq!(backoff.delay(u32::MAX, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn equal_bounds_give_a_fixed_delay() {
        let backoff = Backoff::new(SECOND, SECOND);
        for random in [0.0, 0.3, 1.0] {
            assert_eq!(backoff.delay(0, random), SECOND);
            assert_eq!(backoff.delay(5, random), SECOND);
        }
    }

    #[test]
    fn pauses_grow_until_reset() {
        let mut pauses = Pauses::new(Backoff::new(SECOND, Duration::from_secs(30)));
        let within = |pause: Duration, nominal: f64| {
            let secs = pause.as_secs_f64();
            secs >= (nominal * (1.0 - JITTER)).max(1.0) - 1e-3
                && secs <= nominal * (1.0 + JITTER) + 1e-3
        };
        for nominal in [1.0, 2.0, 4.0, 8.0, 16.0] {
            let pause = pauses.next_pause();
            assert!(within(pause, nominal), "{pause:?} for {nominal} s");
        }
        assert!(pauses.next_pause() <= Duration::from_secs(30));
        pauses.reset();
        assert!(within(pauses.next_pause(), 1.0));
        assert!(within(
            pauses.after_session(Duration::from_secs(1), Duration::from_secs(10)),
            2.0
        ));
        assert!(within(
            pauses.after_session(Duration::from_secs(10), Duration::from_secs(10)),
            1.0
        ));
    }

    #[test]
    fn the_delays_iterator_follows_the_schedule() {
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let delays: Vec<_> = backoff.delays().take(6).collect();
        assert_eq!(delays.len(), 6);
        assert!(delays[0] <= Duration::from_millis(250));
        assert!(delays[3] >= Duration::from_millis(1200));
        assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(3)));
    }

    #[test]
    fn odd_inputs_stay_inside_the_bounds() {
        let backoff = Backoff::new(SECOND, Duration::from_secs(4));
        assert_eq!(backoff.delay(1, f64::NAN), Duration::from_secs(2));
        assert_eq!(backoff.delay(1, 7.0), Duration::from_millis(2500));
        assert_eq!(
            Backoff::new(Duration::from_secs(9), SECOND).max,
            Duration::from_secs(9),
            "a max below the min is raised to it"
        );
        for _ in 0..1000 {
            let delay = backoff.delay_now(3);
            assert!((SECOND..=Duration::from_secs(4)).contains(&delay));
        }
    }
}
