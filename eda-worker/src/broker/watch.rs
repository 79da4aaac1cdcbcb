//! What a connection's events say: `connection.blocked` and
//! `connection.unblocked` (a memory or disk alarm), logged and kept as state
//! for readiness to report, and the error that ends the connection.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use lapin::{Connection, Event};

use crate::Error;

/// The broker's flow control as the worker's connections see it.
#[derive(Debug, Default)]
pub(crate) struct BrokerState {
    /// Connections the broker blocks right now.
    blocked: AtomicUsize,
}

impl BrokerState {
    /// Whether the broker blocks one of the watched connections.
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed) > 0
    }
}

/// One connection's share of [`BrokerState`]: counted once while blocked,
/// and lifted when dropped (a blocked connection that dies blocks no more).
struct Blocked<'a> {
    state: &'a BrokerState,
    on: bool,
}

impl Blocked<'_> {
    fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            if on {
                self.state.blocked.fetch_add(1, Ordering::Relaxed);
            } else {
                self.state.blocked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Watches `connection` (its `role` names it in logs) until it fails, and
/// returns why. A block lifts with the connection: the count is kept right
/// when a blocked connection dies.
pub(crate) async fn watch(
    connection: &Connection,
    role: &'static str,
    state: &BrokerState,
) -> Error {
    let mut events = connection.events_listener();
    let mut blocked = Blocked { state, on: false };
    if connection.status().blocked() {
        tracing::warn!(
            connection = role,
            "RabbitMQ blocks this connection (a memory or disk alarm)"
        );
        blocked.set(true);
    }
    loop {
        match events.next().await {
            Some(Event::ConnectionBlocked(reason)) => {
                tracing::warn!(connection = role, reason = %reason, "RabbitMQ blocks this connection (a memory or disk alarm): publishes wait until it lifts");
                blocked.set(true);
            }
            Some(Event::ConnectionUnblocked) => {
                tracing::info!(connection = role, "RabbitMQ unblocked this connection");
                blocked.set(false);
            }
            Some(Event::Error(source)) => {
                return Error::Broker {
                    operation: format!("{role} connection"),
                    source,
                };
            }
            Some(_) => {}
            None => {
                return Error::Config(format!("the {role} connection's events ended"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_counts_once_per_connection_and_lifts_with_it() {
        let state = BrokerState::default();
        let mut publishing = Blocked {
            state: &state,
            on: false,
        };
        publishing.set(true);
        publishing.set(true);
        let mut consuming = Blocked {
            state: &state,
            on: false,
        };
        consuming.set(true);
        consuming.set(false);
        assert!(state.is_blocked(), "the publishing connection still is");
        drop(publishing);
        assert!(!state.is_blocked(), "a dead connection blocks no more");
        drop(consuming);
        assert_eq!(state.blocked.load(Ordering::Relaxed), 0);
    }
}
