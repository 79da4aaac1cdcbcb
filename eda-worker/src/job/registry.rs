//! The registry: every `#[job]` linked into the binary, collected at start-up
//! without a hand-written list.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use super::{JobDefinition, Subscription, queue_name};
use crate::Error;

/// The jobs known to this binary, indexed by queue and wire name: a wire
/// name is unique per queue (several subscribers of one event, on their
/// own queues, share the event's name).
#[derive(Debug, Clone)]
pub struct Registry {
    jobs: BTreeMap<(&'static str, &'static str), JobDefinition>,
}

impl Registry {
    /// Every `#[job]` linked into this binary.
    ///
    /// Fails as [`Registry::from_definitions`] does.
    pub fn from_linked_jobs() -> Result<Self, Error> {
        Self::from_definitions(inventory::iter::<JobDefinition>.into_iter().copied())
    }

    /// A registry of the given definitions (for tests and embedding).
    ///
    /// Fails when two jobs of one queue share a wire name (naming both
    /// functions), when a job with raw bindings (`bind`) shares its queue,
    /// when jobs of one queue declare different queue types, or when a queue name
    /// breaks the rules: 1 to [`MAX_QUEUE_NAME`](crate::job::MAX_QUEUE_NAME)
    /// bytes of letters, digits, `.`, `_`, `-` and `:`, not `amq.`-prefixed,
    /// and not named like another queue's dead-letter queue (`x.dlq`) or
    /// delay queue (`x.delay.5s`).
    pub fn from_definitions(
        definitions: impl IntoIterator<Item = JobDefinition>,
    ) -> Result<Self, Error> {
        let mut jobs = BTreeMap::new();
        let mut queue_types: BTreeMap<&'static str, &JobDefinition> = BTreeMap::new();
        let definitions: Vec<JobDefinition> = definitions.into_iter().collect();
        for definition in &definitions {
            if let Some(reason) = queue_name::problem(definition.queue) {
                return Err(Error::InvalidQueueName {
                    queue: definition.queue,
                    job: definition.function_path,
                    reason,
                });
            }
        }
        for definition in &definitions {
            let first = queue_types.entry(definition.queue).or_insert(definition);
            if first.queue_type != definition.queue_type {
                return Err(Error::QueueTypeConflict {
                    queue: definition.queue,
                    first: first.function_path,
                    first_type: first.queue_type,
                    second: definition.function_path,
                    second_type: definition.queue_type,
                });
            }
        }
        let mut raw: BTreeMap<&'static str, &JobDefinition> = BTreeMap::new();
        for definition in &definitions {
            if matches!(definition.subscription, Subscription::Raw(_)) {
                raw.entry(definition.queue).or_insert(definition);
            }
        }
        for definition in &definitions {
            if let Some(raw) = raw.get(definition.queue)
                && raw.function_path != definition.function_path
            {
                return Err(Error::RawSubscriberNotAlone {
                    queue: definition.queue,
                    subscriber: raw.function_path,
                    other: definition.function_path,
                });
            }
        }
        for definition in definitions {
            match jobs.entry((definition.queue, definition.name)) {
                Entry::Vacant(slot) => {
                    slot.insert(definition);
                }
                Entry::Occupied(existing) => {
                    let mut pair = [existing.get().function_path, definition.function_path];
                    pair.sort_unstable();
                    return Err(Error::DuplicateJob {
                        queue: definition.queue,
                        name: definition.name,
                        first: pair[0],
                        second: pair[1],
                    });
                }
            }
        }
        Ok(Registry { jobs })
    }

    /// The job of `queue` with this wire name.
    pub fn get(&self, queue: &str, name: &str) -> Option<&JobDefinition> {
        self.jobs
            .iter()
            .find(|((job_queue, job_name), _)| *job_queue == queue && *job_name == name)
            .map(|(_, job)| job)
    }

    /// All jobs, ordered by queue and wire name.
    pub fn jobs(&self) -> impl Iterator<Item = &JobDefinition> {
        self.jobs.values()
    }

    /// The distinct queues the jobs use, sorted.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<_> = self.jobs.values().map(|job| job.queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }

    /// True when no job is registered.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::prelude::*;
    use crate::{Error, JobDefinition, Registry};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Greeting {
        name: String,
    }

    /// A job used by the registry's own tests.
    #[job(
        queue = "registry-test",
        retries = 5,
        timeout = "90s",
        backoff = "2s..1m"
    )]
    async fn greet(ctx: JobContext, args: Greeting) -> Result<(), JobError> {
        if args.name.is_empty() {
            return Err(JobError::permanent("no name"));
        }
        assert_eq!(ctx.attempt(), 0);
        Ok(())
    }

    #[job(queue = "registry-test", name = "renamed.wire")]
    async fn renamed(_ctx: JobContext, _args: u32) -> Result<(), JobError> {
        Ok(())
    }

    #[test]
    fn linked_jobs_are_registered_with_their_options() {
        let registry = Registry::from_linked_jobs().unwrap();
        let greeting = registry
            .get("registry-test", "greet")
            .expect("greet is registered");
        assert_eq!(greeting.queue, "registry-test");
        assert_eq!(greeting.retries, 5);
        assert_eq!(greeting.timeout, Duration::from_secs(90));
        assert_eq!(
            greeting.function_path,
            "eda_worker::job::registry::tests::greet"
        );
        assert_eq!(
            greeting.backoff,
            crate::Backoff::new(Duration::from_secs(2), Duration::from_secs(60))
        );
        let other = registry
            .get("registry-test", "renamed.wire")
            .expect("wire name from `name`");
        assert_eq!(other.retries, crate::DEFAULT_RETRIES);
        assert_eq!(other.timeout, crate::DEFAULT_TIMEOUT);
        assert_eq!(other.backoff, crate::DEFAULT_BACKOFF);
        assert_eq!(other.queue_type, crate::QueueType::Classic);
        // Other modules' tests link jobs of their own.
        assert!(registry.queues().contains(&"registry-test"));
    }

    /// Why the registry refuses `definitions`.
    fn refusal(definitions: impl IntoIterator<Item = JobDefinition>) -> Error {
        Registry::from_definitions(definitions).unwrap_err()
    }

    /// A no-op job implemented by hand (so that it stays out of the linked
    /// registry) with this wire name, queue and queue type.
    macro_rules! hand_written_job {
        ($job:ident, $name:literal, $queue:literal, $queue_type:ident) => {
            #[derive(Debug, Default, Clone, Copy)]
            struct $job;

            impl Job for $job {
                type Args = ();
                type Output = ();
                const NAME: &'static str = $name;
                const QUEUE: &'static str = $queue;
                const QUEUE_TYPE: crate::QueueType = crate::QueueType::$queue_type;
                async fn call(&self, _ctx: JobContext, _args: ()) -> Result<(), JobError> {
                    Ok(())
                }
            }
        };
    }

    hand_written_job!(OnClassic, "on_classic", "shared", Classic);
    hand_written_job!(OnQuorum, "on_quorum", "shared", Quorum);
    // Its queue is another queue's dead-letter queue.
    hand_written_job!(
        OnADeadLetterQueue,
        "on_a_dead_letter_queue",
        "email.dlq",
        Classic
    );

    /// A raw subscriber, implemented by hand.
    #[derive(Debug, Default, Clone, Copy)]
    struct Audit;

    impl Job for Audit {
        type Args = serde_json::Value;
        type Output = ();
        const NAME: &'static str = "audit";
        const QUEUE: &'static str = "shared";
        const SUBSCRIPTION: crate::Subscription =
            crate::Subscription::Raw(&[crate::Binding::raw("orders", "order.#")]);
        async fn call(&self, _ctx: JobContext, _args: Self::Args) -> Result<(), JobError> {
            Ok(())
        }
    }

    #[test]
    fn a_raw_subscriber_is_its_queues_only_job() {
        let error = refusal([
            JobDefinition::of::<Audit>("app::audit"),
            JobDefinition::of::<OnClassic>("app::on_classic"),
        ]);
        assert_eq!(
            error.to_string(),
            "job `app::audit` has raw bindings (`bind`) and takes every message of queue `shared`, which job `app::on_classic` uses too; give one of them another queue"
        );
        // One wire name on two queues is two jobs.
        hand_written_job!(Elsewhere, "on_classic", "elsewhere", Classic);
        let registry = Registry::from_definitions([
            JobDefinition::of::<OnClassic>("app::on_classic"),
            JobDefinition::of::<Elsewhere>("app::elsewhere"),
        ])
        .expect("a wire name is unique per queue");
        assert!(registry.get("elsewhere", "on_classic").is_some());
        assert!(registry.get("shared", "on_classic").is_some());
    }

    #[test]
    fn jobs_of_one_queue_must_agree_on_its_type() {
        let error = refusal([
            JobDefinition::of::<OnClassic>("app::on_classic"),
            JobDefinition::of::<OnQuorum>("app::on_quorum"),
        ]);
        assert_eq!(
            error.to_string(),
            "jobs `app::on_classic` (classic) and `app::on_quorum` (quorum) share queue `shared` but declare different queue types; give them the same `queue_type`"
        );
    }

    #[test]
    fn queue_names_are_checked_for_hand_written_jobs_too() {
        let error = refusal([JobDefinition::of::<OnADeadLetterQueue>(
            "app::on_a_dead_letter_queue",
        )]);
        assert_eq!(
            error.to_string(),
            "job `app::on_a_dead_letter_queue` cannot use queue `email.dlq`: it collides with the dead-letter queue of `email`; choose a name that does not end in `.dlq`"
        );
    }

    #[tokio::test]
    async fn the_handle_runs_the_body_without_a_broker() {
        greet
            .call(JobContext::for_test(), Greeting { name: "ada".into() })
            .await
            .unwrap();
        let error = greet
            .call(
                JobContext::for_test(),
                Greeting {
                    name: String::new(),
                },
            )
            .await
            .unwrap_err();
        assert!(error.is_permanent());
    }

    #[test]
    fn the_erased_definition_decodes_json_arguments() {
        let definition = JobDefinition::of::<greet>("greet");
        assert!(
            definition
                .start(JobContext::for_test(), br#"{"name":"ada"}"#, false)
                .is_ok()
        );
        let error = definition
            .start(JobContext::for_test(), br#"{"nom":"ada"}"#, false)
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("missing field `name`"),
            "{error}"
        );
    }

    #[test]
    fn two_jobs_with_one_wire_name_are_refused_naming_both() {
        let error = refusal([
            JobDefinition::of::<greet>("app::a::greet"),
            JobDefinition::of::<greet>("app::b::greet"),
        ]);
        assert!(matches!(
            error,
            Error::DuplicateJob {
                queue: "registry-test",
                name: "greet",
                first: "app::a::greet",
                second: "app::b::greet"
            }
        ));
        assert!(
            error
                .to_string()
                .contains("`app::a::greet` and `app::b::greet`"),
            "{error}"
        );
    }
}
