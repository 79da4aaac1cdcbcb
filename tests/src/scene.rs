//! One [`Scene`] per test: its queues reset, an optional fresh database
//! schema, a client, workers running in this process, and the teardown.
//!
//! ```no_run
//! # use eda_worker_tests::Scene;
//! # use eda_worker_tests::jobs::retries::flaky;
//! # async fn example() {
//! let mut scene = Scene::of(flaky).start().await;
//! scene.enqueue(flaky, 2).await;
//! // ... wait for the effects ...
//! scene.stop_workers().await;
//! assert_eq!(scene.dead_letters_ready().await, 0);
//! scene.finish().await;
//! # }
//! ```

use eda_worker::dead_letter::queue_name as dead_letter_queue;
use eda_worker::postgres::Database;
use eda_worker::{Client, ClientOptions, DelayQueues, EnqueueOptions, Job, Worker, WorkerConfig};
use lapin::message::BasicGetMessage;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::database::{migrated_database, remove_database};
use crate::{Broker, WAIT, amqp_url, wait_until, worker_config};

/// A test's broker connection, queues, database, client and workers.
pub struct Scene {
    /// Raw access to the broker, for inspecting what the library did.
    pub broker: Broker,
    /// A client of the test broker.
    pub client: Client,
    /// The scene's queues, its main one first: deleted before and after.
    queues: Vec<String>,
    /// The test's own delay buckets, when it has some.
    delays: Option<DelayQueues>,
    database: Option<Database>,
    /// The settings of the scene's workers, less their queue.
    config: WorkerConfig,
    workers: Vec<(String, RunningWorker)>,
}

/// What a [`Scene`] starts with; [`SceneBuilder::start`] sets it up.
#[must_use = "a scene is set up by `start`"]
pub struct SceneBuilder {
    queues: Vec<String>,
    schema: Option<String>,
    config: WorkerConfig,
    client_options: ClientOptions,
    delays: Option<DelayQueues>,
    workers: usize,
}

impl Scene {
    /// A scene on `job`'s queue, with one worker consuming it.
    pub fn of<J: Job>(_job: J) -> SceneBuilder {
        Self::on_queue(J::QUEUE)
    }

    /// A scene on `queue`, which no test job may declare (a queue the test
    /// declares itself).
    pub fn on_queue(queue: impl Into<String>) -> SceneBuilder {
        SceneBuilder {
            queues: vec![queue.into()],
            schema: None,
            config: worker_config(),
            client_options: ClientOptions::default(),
            delays: None,
            workers: 1,
        }
    }

    /// The main queue.
    pub fn queue(&self) -> &str {
        &self.queues[0]
    }

    /// The main queue's dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        dead_letter_queue(self.queue())
    }

    /// The scene's database; panics when it was built without one.
    pub fn database(&self) -> &Database {
        self.database
            .as_ref()
            .expect("the scene was built with `.database(schema)`")
    }

    /// Enqueues `job` with `args` through the scene's client; returns the
    /// message id.
    pub async fn enqueue<J: Job>(&self, job: J, args: J::Args) -> String {
        self.enqueue_with(job, args, EnqueueOptions::default())
            .await
    }

    /// [`Scene::enqueue`] with `options`.
    pub async fn enqueue_with<J: Job>(
        &self,
        job: J,
        args: J::Args,
        options: EnqueueOptions,
    ) -> String {
        self.client
            .enqueue_with(job, args, options)
            .await
            .unwrap_or_else(|error| panic!("enqueue {}: {error}", J::NAME))
            .to_string()
    }

    /// Messages ready in the main queue.
    pub async fn ready(&self) -> u32 {
        self.broker.ready(self.queue()).await
    }

    /// Messages ready in the main queue's dead-letter queue.
    pub async fn dead_letters_ready(&self) -> u32 {
        self.broker.ready(&self.dead_letter_queue()).await
    }

    /// Waits until the main queue's dead-letter queue holds `count` messages.
    pub async fn wait_for_dead_letters(&self, count: u32) {
        let dlq = self.dead_letter_queue();
        wait_until(&format!("{count} dead letters in {dlq}"), WAIT, || async {
            self.broker.ready(&dlq).await == count
        })
        .await;
    }

    /// Waits until the main queue's dead-letter queue holds `count` messages,
    /// then stops the workers (so that nothing changes while the test looks).
    pub async fn stop_once_dead_lettered(&mut self, count: u32) {
        self.wait_for_dead_letters(count).await;
        self.stop_workers().await;
    }

    /// Takes every message off the main queue's dead-letter queue.
    pub async fn take_dead_letters(&self) -> Vec<BasicGetMessage> {
        self.broker.drain(&self.dead_letter_queue()).await
    }

    /// Starts another worker on the main queue, with the scene's settings.
    pub async fn start_worker(&mut self) {
        let queue = self.queue().to_owned();
        self.start_worker_on(&queue).await;
    }

    /// Starts a worker on `queue` with the scene's settings, and waits until
    /// the broker counts as many consumers on it as the scene started.
    pub async fn start_worker_on(&mut self, queue: &str) {
        let worker = RunningWorker::spawn(self.config.clone().queues([queue]));
        self.workers.push((queue.to_owned(), worker));
        let started = self.workers.iter().filter(|(q, _)| q == queue).count();
        let started = u32::try_from(started).expect("a few workers");
        wait_until(
            &format!("{started} worker(s) consume {queue}"),
            WAIT,
            || async { self.broker.consumers(queue).await >= started },
        )
        .await;
    }

    /// True while every worker of the scene runs.
    pub fn workers_running(&self) -> bool {
        self.workers.iter().all(|(_, worker)| worker.is_running())
    }

    /// Stops the workers gracefully, asserting that each ended without error.
    pub async fn stop_workers(&mut self) {
        for (queue, worker) in self.workers.drain(..) {
            if let Err(error) = worker.stop().await {
                panic!("the worker on {queue} failed: {error}");
            }
        }
    }

    /// Stops the workers, closes the client, drops the schema and deletes
    /// the queues (with their dead letters and delay queues).
    pub async fn finish(mut self) {
        self.stop_workers().await;
        self.client.close().await.expect("close the client");
        if let Some(database) = self.database.take() {
            remove_database(database).await;
        }
        reset(&self.broker, &self.queues, self.delays.as_ref()).await;
        self.broker.close().await;
    }
}

impl SceneBuilder {
    /// Also resets and deletes `job`'s queue (a queue the test reads from).
    pub fn also<J: Job>(self, _job: J) -> Self {
        self.also_queue(J::QUEUE)
    }

    /// Also resets and deletes `queue`.
    pub fn also_queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// A fresh, migrated eda-worker schema named `schema` (unique to the
    /// test), given to the workers, dropped at the end.
    pub fn database(mut self, schema: &str) -> Self {
        self.schema = Some(schema.to_owned());
        self
    }

    /// Changes the workers' settings (the database and delay queues are set
    /// by the scene).
    pub fn worker_config(mut self, change: impl FnOnce(WorkerConfig) -> WorkerConfig) -> Self {
        self.config = change(self.config);
        self
    }

    /// The client's options (the delay queues are set by the scene).
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.client_options = options;
        self
    }

    /// Delay queues of the test's own for the client and the workers,
    /// deleted with the scene's queues.
    pub fn delay_queues(mut self, delays: DelayQueues) -> Self {
        self.delays = Some(delays);
        self
    }

    /// How many workers start on the main queue (1 unless set; 0 to start
    /// them later with [`Scene::start_worker`], or never).
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Sets the scene up: resets the queues, creates the schema, connects
    /// the client and starts the workers.
    pub async fn start(self) -> Scene {
        let broker = Broker::connect().await;
        reset(&broker, &self.queues, self.delays.as_ref()).await;
        let mut config = self.config;
        let mut client_options = self.client_options;
        if let Some(delays) = &self.delays {
            config = config.delay_queues(delays.clone());
            client_options = client_options.delay_queues(delays.clone());
        }
        let database = match &self.schema {
            Some(schema) => {
                let database = migrated_database(schema).await;
                config = config.database(database.clone());
                Some(database)
            }
            None => None,
        };
        let client = Client::connect_with_options(&amqp_url(), client_options)
            .await
            .expect("connect the client");
        let mut scene = Scene {
            broker,
            client,
            queues: self.queues,
            delays: self.delays,
            database,
            config,
            workers: Vec::new(),
        };
        for _ in 0..self.workers {
            scene.start_worker().await;
        }
        scene
    }
}

/// Deletes `queues` with their dead-letter and delay queues.
async fn reset(broker: &Broker, queues: &[String], delays: Option<&DelayQueues>) {
    let default = DelayQueues::default();
    for queue in queues {
        broker
            .reset_with_delays(queue, delays.unwrap_or(&default))
            .await;
    }
}

/// A worker running in this process, stopped with its token.
struct RunningWorker {
    token: CancellationToken,
    task: JoinHandle<Result<(), eda_worker::Error>>,
}

impl RunningWorker {
    fn spawn(config: WorkerConfig) -> Self {
        let token = CancellationToken::new();
        let worker = Worker::new(config).expect("worker configuration");
        let task = tokio::spawn(worker.run(token.clone()));
        RunningWorker { token, task }
    }

    fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(self) -> Result<(), eda_worker::Error> {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("worker stops in time")
            .expect("worker task")
    }
}
