//! The worker runtime: one consumer per queue, bounded handlers, coalesced
//! acks, dead letters, reconnects, and a graceful stop on a cancellation token.
//!
//! The runtime never touches signals: the CLI owns them and cancels the
//! token, so tests stop a worker the same way.

mod ack;
mod consumer;
mod decision;
mod dispatch;
mod follow_ups;
mod hold;
mod reply;
mod session;
mod starts;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use self::decision::panic_message;
use self::dispatch::QueueJobs;
use crate::broker::BrokerState;
use crate::error::error_chain_text;
use crate::outbox::Relay;
use crate::postgres::health::DatabaseHealth;
use crate::postgres::{inbox, pool_size};
use crate::{Error, JobDefinition, Registry, WorkerConfig};

/// A worker: consumes the queues of the registered jobs until cancelled.
///
/// ```no_run
/// use eda_worker::{Worker, WorkerConfig};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn demo() -> Result<(), eda_worker::Error> {
/// let token = CancellationToken::new();
/// let worker = Worker::new(WorkerConfig::from_env().queues(["email"]))?;
/// let running = tokio::spawn(worker.run(token.clone()));
/// // ... later, e.g. on SIGTERM:
/// token.cancel();
/// running.await.expect("worker task")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    queues: Vec<Arc<QueueJobs>>,
    /// Whether the broker blocks the worker's connections (for readiness).
    broker: Arc<BrokerState>,
    /// Whether the database answers (set when `run` starts).
    health: Option<Arc<DatabaseHealth>>,
}

impl Worker {
    /// A worker for every `#[job]` linked into this binary.
    ///
    /// Fails when two jobs share a wire name, a queue name breaks the rules
    /// (see [`Registry::from_definitions`]), or the configuration names a
    /// queue no job uses.
    pub fn new(config: WorkerConfig) -> Result<Self, Error> {
        Self::with_registry(config, Registry::from_linked_jobs()?)
    }

    /// A worker for the jobs of `registry`.
    pub fn with_registry(config: WorkerConfig, registry: Registry) -> Result<Self, Error> {
        if config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if config.effective_prefetch() == 0 {
            return Err(Error::Config("prefetch must be at least 1".into()));
        }
        let selected = select_queues(&registry, &config.queues)?;
        let worker = Self::assemble(config, &registry, selected)?;
        if worker.config.database.is_none()
            && let Some(job) = registry
                .jobs()
                .find(|job| job.dedup == Some(true) && worker.queues().contains(&job.queue))
        {
            return Err(Error::Config(format!(
                "job `{}` declares dedup = true, but no database is configured: set DATABASE_URL (or WorkerConfig::database), or remove `dedup = true`",
                job.function_path
            )));
        }
        Ok(worker)
    }

    /// Declares what the queues of `config` (every queue of the linked jobs
    /// unless it names some) need: each queue, its dead-letter queue, its
    /// delay queues, its exchanges and bindings. Returns the queues.
    ///
    /// `worker topology declare` runs it as a deploy step, so that events
    /// published before the first worker starts find their subscribers'
    /// queues. No database is needed.
    pub async fn declare_topology(config: WorkerConfig) -> Result<Vec<&'static str>, Error> {
        let registry = Registry::from_linked_jobs()?;
        let selected = select_queues(&registry, &config.queues)?;
        let worker = Self::assemble(config, &registry, selected)?;
        worker.declare_all().await?;
        Ok(worker.queues())
    }

    fn assemble(
        config: WorkerConfig,
        registry: &Registry,
        selected: Vec<&'static str>,
    ) -> Result<Self, Error> {
        let queues = selected
            .into_iter()
            .map(|queue| Arc::new(QueueJobs::new(queue, registry.jobs().copied())))
            .collect();
        Ok(Worker {
            config,
            queues,
            broker: Arc::default(),
            health: None,
        })
    }

    /// The queues this worker consumes.
    pub fn queues(&self) -> Vec<&'static str> {
        self.queues.iter().map(|jobs| jobs.queue).collect()
    }

    /// Runs until `token` is cancelled, then stops gracefully: consumers are
    /// cancelled, running jobs get up to the shutdown timeout to finish, acks
    /// are flushed, and unstarted messages go back to the broker.
    ///
    /// At start, an unreachable broker is an error after the configured
    /// attempts, and a refused login at once. Once running, the worker rides
    /// out broker restarts and refused logins: it reconnects for as long as
    /// it takes (backing off up to 30 s between attempts), and returns an
    /// error only for what waiting cannot fix: a queue declared with other
    /// arguments.
    ///
    /// With a database, the outbox relay (unless turned off) and the inbox
    /// pruner run beside the consumers, on a task tracker of the worker's;
    /// they are cancelled with the token, and `run` returns once they and
    /// the consumers have stopped.
    pub async fn run(mut self, token: CancellationToken) -> Result<(), Error> {
        let background = TaskTracker::new();
        let background_token = token.child_token();
        self.health = self
            .config
            .database
            .clone()
            .map(|database| DatabaseHealth::new(database, background_token.clone()));
        let mut handles = Vec::new();
        if let Some(database) = &self.config.database {
            // Before the relay and the pruner, which need the tables.
            if self.config.migrate {
                database.migrate().await?;
            } else {
                database.check_migrated().await?;
            }
            let needed = pool_size(
                self.config.concurrency,
                self.queues.len(),
                self.config.relay,
            );
            let size = database.pool().options().get_max_connections();
            if size < needed {
                tracing::warn!(
                    pool_size = size,
                    needed,
                    "the database pool is smaller than the jobs that may run at once with a transaction (concurrency x queues) plus the relay and the pruner: jobs will wait for a connection, and fail after the pool's acquire timeout"
                );
            }
            if self.config.relay {
                let relay = Relay::new(database.clone(), self.config.amqp_url.clone())
                    .tls(self.config.tls.clone())
                    .delay_queues(self.config.delay_queues.clone());
                let relay_token = background_token.clone();
                handles.push(background.spawn(async move {
                    if let Err(error) = relay.run(relay_token).await {
                        tracing::error!(error = %error_chain_text(&error), "outbox relay failed");
                    }
                }));
            }
            handles.push(background.spawn(inbox::prune_periodically(
                database.clone(),
                self.config.inbox_retention,
                background_token.clone(),
            )));
        }
        background.close();
        let result = self.run_sessions(token).await;
        background_token.cancel();
        background.wait().await;
        for handle in handles {
            // Finished: the tracker waited for it. An error is a panic.
            if let Err(error) = handle.await {
                tracing::error!(error = %error, "the outbox relay or the inbox pruner panicked");
            }
        }
        result
    }
}

/// The queues to consume: the configured ones, each used by a job, or every
/// queue of the registry when none is configured.
fn select_queues(registry: &Registry, wanted: &[String]) -> Result<Vec<&'static str>, Error> {
    let known = registry.queues();
    let selected: Vec<&'static str> = if wanted.is_empty() {
        known.clone()
    } else {
        wanted
            .iter()
            .map(|wanted| {
                known
                    .iter()
                    .copied()
                    .find(|queue| queue == wanted)
                    .ok_or_else(|| Error::UnknownQueue {
                        queue: wanted.clone(),
                        known: if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        },
                    })
            })
            .collect::<Result<_, _>>()?
    };
    if selected.is_empty() {
        return Err(Error::Config(
            "no job is registered: put #[job(queue = \"...\")] on an async fn linked into this binary".into(),
        ));
    }
    Ok(selected)
}

/// The longest a message of a job with `timeout` may stay unacked: it may
/// wait behind the other prefetched messages (prefetch ÷ concurrency rounds
/// of handlers, each running up to the timeout), then run for the timeout.
fn longest_unacked(timeout: Duration, prefetch: u16, concurrency: usize) -> Duration {
    let rounds = f64::from(prefetch) / concurrency.max(1) as f64 + 1.0;
    Duration::try_from_secs_f64(timeout.as_secs_f64() * rounds).unwrap_or(Duration::MAX)
}

/// Jobs whose messages may stay unacked as long as the broker's consumer
/// timeout, with how long: the broker would close the channel under such a
/// job, and the message would run again elsewhere.
fn jobs_outliving<'a>(
    jobs: impl IntoIterator<Item = &'a JobDefinition>,
    consumer_timeout: Duration,
    prefetch: u16,
    concurrency: usize,
) -> Vec<(&'a JobDefinition, Duration)> {
    jobs.into_iter()
        .map(|job| (job, longest_unacked(job.timeout, prefetch, concurrency)))
        .filter(|(_, unacked)| *unacked >= consumer_timeout)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    #[job(queue = "long-jobs-test", timeout = "45m")]
    async fn long_report(_ctx: JobContext, _args: ()) -> Result<(), JobError> {
        Ok(())
    }

    #[job(queue = "long-jobs-test", timeout = "1m")]
    async fn short_report(_ctx: JobContext, _args: ()) -> Result<(), JobError> {
        Ok(())
    }

    fn reports() -> [JobDefinition; 2] {
        [
            JobDefinition::of::<long_report>("t::long_report"),
            JobDefinition::of::<short_report>("t::short_report"),
        ]
    }

    #[test]
    fn jobs_outliving_the_consumer_timeout_are_found() {
        let jobs = reports();
        let named = |consumer_timeout, prefetch, concurrency| -> Vec<&str> {
            jobs_outliving(&jobs, consumer_timeout, prefetch, concurrency)
                .iter()
                .map(|(job, _)| job.name)
                .collect()
        };
        // The defaults: prefetch 4 x concurrency, so a message waits up to 4
        // timeouts before its own: 5 x 1 min for the short job.
        assert_eq!(
            named(crate::DEFAULT_CONSUMER_TIMEOUT, 64, 16),
            ["long_report"]
        );
        assert!(named(Duration::from_secs(4 * 3600), 1, 1).is_empty());
        assert_eq!(
            named(Duration::from_secs(5 * 60), 64, 16),
            ["long_report", "short_report"]
        );
    }

    #[test]
    fn a_prefetched_message_waits_behind_the_others() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(longest_unacked(minutes(10), 64, 16), minutes(50));
        assert_eq!(longest_unacked(minutes(10), 16, 16), minutes(20));
        assert_eq!(longest_unacked(minutes(10), 1, 4), Duration::from_secs(750));
        assert_eq!(longest_unacked(Duration::MAX, 64, 16), Duration::MAX);
        assert_eq!(
            longest_unacked(minutes(1), 1, 0),
            minutes(2),
            "no division by zero"
        );
    }

    #[test]
    fn only_queues_a_job_uses_can_be_selected() {
        let registry = Registry::from_definitions(reports()).unwrap();
        assert_eq!(select_queues(&registry, &[]).unwrap(), ["long-jobs-test"]);
        let error = select_queues(&registry, &["nope".to_owned()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no registered job uses queue `nope` (known queues: long-jobs-test)"
        );
        let empty = Registry::from_definitions([]).unwrap();
        assert!(select_queues(&empty, &[]).is_err());
    }
}
