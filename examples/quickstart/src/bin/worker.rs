//! The app's `worker` command: `cargo run -p quickstart --bin worker -- run`.

// Links the app crate, so that its #[job]s are registered.
use quickstart as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    eda_worker::cli::main().await
}
