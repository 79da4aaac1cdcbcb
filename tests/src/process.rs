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
