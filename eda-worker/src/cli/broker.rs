//! Where the broker is, for every command that talks to it: the URL and the
//! TLS files of an `amqps://` one.

use std::path::PathBuf;

use clap::Args;

use crate::Tls;
use crate::config::DEFAULT_AMQP_URL;

#[derive(Debug, Args)]
pub(super) struct BrokerArgs {
    /// RabbitMQ URL (amqps:// for TLS; ?auth_mechanism=external logs in with the client certificate).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, hide_default_value = true)]
    pub(super) amqp_url: String,
    /// PEM file of the CA that signed the broker's certificate (amqps://; the system's roots are trusted too).
    #[arg(long, env = crate::ENV_TLS_CA)]
    tls_ca: Option<PathBuf>,
    /// PEM file of a client certificate for mutual TLS (with --tls-key).
    #[arg(long, env = crate::ENV_TLS_CERT, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (unencrypted).
    #[arg(long, env = crate::ENV_TLS_KEY, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl BrokerArgs {
    /// The TLS files given.
    pub(super) fn tls(&self) -> Tls {
        Tls {
            ca_file: self.tls_ca.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
        }
    }
}
