//! The `worker` command with the test jobs linked in, run as a subprocess by
//! the shutdown tests.

use eda_worker_tests as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    eda_worker::cli::main().await
}
