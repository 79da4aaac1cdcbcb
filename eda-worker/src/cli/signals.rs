//! The stop signals, owned by the CLI (the library only takes a cancellation
//! token): the first SIGTERM or SIGINT starts a graceful stop, a second one
//! exits at once with status 130.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Exit status when a second signal cuts the graceful stop short.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs `work` with a token that the first stop signal cancels. The signals
/// are listened to before `work` starts, so that an early SIGTERM is a
/// graceful stop and not the default action. `what` names what runs, for
/// the error when signals cannot be listened to.
pub(super) async fn until_stopped<F, Fut, T>(what: &str, work: F) -> T
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let token = CancellationToken::new();
    let signals = match StopSignals::install() {
        Ok(signals) => Some(tokio::spawn(stop_on_signals(signals, token.clone()))),
        Err(error) => {
            tracing::error!(error = %error, "cannot listen for stop signals; stop the {what} with SIGKILL");
            None
        }
    };
    let result = work(token).await;
    if let Some(signals) = signals {
        signals.abort();
    }
    result
}

/// First signal: cancel the token (graceful stop). Second: exit at once.
async fn stop_on_signals(mut signals: StopSignals, token: CancellationToken) {
    signals.next().await;
    tracing::info!("stop signal received; finishing running jobs (send another to exit at once)");
    token.cancel();
    signals.next().await;
    tracing::warn!("second stop signal; exiting without waiting for running jobs");
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}

/// SIGTERM and SIGINT, listened to from installation on: a signal that comes
/// while the first one is being handled is not lost.
#[cfg(unix)]
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals)
    }

    async fn next(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
