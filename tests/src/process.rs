//! The `test-worker` binary (the `worker` command with the test jobs linked
//! in), run as a subprocess by the tests of the CLI, of signals and of
//! crashes.

use std::process::Stdio;

use eda_worker::postgres::Database;
use tokio::process::Command;

use crate::amqp_url;
use crate::database::database_url;

/// A `test-worker` command with `args`: see [`worker_command`].
///
/// A macro because Cargo tells the binary's path (`CARGO_BIN_EXE_*`) only
/// to the integration tests, so `env!` must expand there.
#[macro_export]
macro_rules! worker_command {
    ($($arg:expr),* $(,)?) => {
        $crate::process::worker_command(env!("CARGO_BIN_EXE_test-worker"), &[$($arg),*])
    };
}

/// `binary` with `args`, talking to the test broker, logging warnings only,
/// with no terminal on stdin, and killed if the test drops it.
pub fn worker_command(binary: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The environment that points the command at `database`'s schema.
pub fn database_env(database: &Database) -> [(&'static str, String); 2] {
    [
        ("DATABASE_URL", database_url()),
        ("EDA_DB_SCHEMA", database.schema().to_string()),
    ]
}

/// A `worker` subprocess whose log lines are collected (and echoed to the
/// test's stderr, prefixed `[test-worker]`).
pub struct WorkerProcess {
    child: tokio::process::Child,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl WorkerProcess {
    /// Spawns `command` (`worker_command!("run")`) on `queue` with `extra`
    /// arguments, logging at `info` (or `TEST_WORKER_LOG`).
    pub fn spawn(mut command: Command, queue: &str, extra: &[&str]) -> Self {
        command.args(["--queues", queue]).args(extra);
        let level = std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "info".into());
        Self::start(command, &level)
    }

    /// Spawns `command` as it is, logging at `level` (`RUST_LOG`).
    pub fn start(mut command: Command, level: &str) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = command
            .env("RUST_LOG", level)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn test-worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[test-worker] {line}");
                // The receiver may be gone (or never read): keep echoing.
                let _ = sender.send(line);
            }
        });
        WorkerProcess { child, log }
    }

    /// Waits for a log line containing `words`.
    pub async fn wait_for_log(&mut self, words: &str) {
        self.wait_for_log_without(words, "\u{0}never\u{0}").await;
    }

    /// Waits for a log line containing `words`, asserting on the way that no
    /// line contains `secret`.
    pub async fn wait_for_log_without(&mut self, words: &str, secret: &str) {
        let found = tokio::time::timeout(crate::WAIT, async {
            while let Some(line) = self.log.recv().await {
                assert!(!line.contains(secret), "the log shows {secret:?}: {line}");
                if line.contains(words) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the worker should log {words:?}");
    }

    /// Sends signal `name` (`TERM`, `INT`, `KILL`) to the worker.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the worker runs").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Whether the worker still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most [`crate::WAIT`]) for the worker to exit: its status
    /// and how long that took.
    pub async fn exit(mut self) -> (std::process::ExitStatus, std::time::Duration) {
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(crate::WAIT, self.child.wait())
            .await
            .expect("the worker exits in time")
            .expect("wait for the worker");
        (status, started.elapsed())
    }
}
