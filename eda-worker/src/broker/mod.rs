//! The seam to RabbitMQ: connecting (with bounded retries, TLS and redacted URLs),
//! declaring queues on channels of their own, and confirmed publishing.

mod call;
mod connect;
mod publisher;
mod tls;
mod topology;
mod watch;

pub(crate) use call::{BROKER_CALL_TIMEOUT, bounded, close_wait};
pub use connect::redact_url;
pub(crate) use connect::{ConnectPolicy, connect, redact_text};
pub(crate) use publisher::{Outgoing, Publisher};
pub use tls::{ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, Tls};
pub use topology::QueueType;
pub(crate) use topology::{
    QueueSpec, bind_queue, declare_dead_letter_queue, declare_exchange, declare_queue,
};
pub(crate) use watch::{BrokerState, watch};
