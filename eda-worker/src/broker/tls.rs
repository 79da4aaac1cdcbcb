//! [`Tls`]: what an `amqps://` connection trusts and shows. TLS is always
//! compiled in (rustls with the ring provider, the platform's roots), and
//! never a silent fallback: files set for a plain `amqp://` URL are an error,
//! and a failed handshake is one that names TLS.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Environment variable naming the CA file ([`Tls::from_env`], `--tls-ca`).
pub const ENV_TLS_CA: &str = "AMQP_TLS_CA";
/// Environment variable naming the client certificate file (`--tls-cert`).
pub const ENV_TLS_CERT: &str = "AMQP_TLS_CERT";
/// Environment variable naming the client key file (`--tls-key`).
pub const ENV_TLS_KEY: &str = "AMQP_TLS_KEY";

/// TLS settings of an `amqps://` connection, as PEM files read when the
/// connection opens (so a reconnect picks up rotated files).
///
/// With none set, `amqps://` trusts the platform's root certificates and
/// shows no client certificate. `?auth_mechanism=external` in the URL logs
/// in with the client certificate instead of a password.
///
/// ```
/// use eda_worker::Tls;
///
/// let tls = Tls::default()
///     .ca_file("/etc/rabbitmq/ca.pem")
///     .client_cert("/etc/app/client.pem", "/etc/app/client.key");
/// assert!(tls.is_set());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tls {
    /// PEM file of the CA(s) to trust besides the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl Tls {
    /// The files named by `AMQP_TLS_CA`, `AMQP_TLS_CERT` and `AMQP_TLS_KEY`
    /// (unset or empty: none).
    pub fn from_env() -> Self {
        let path = |name| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        Tls {
            ca_file: path(ENV_TLS_CA),
            cert_file: path(ENV_TLS_CERT),
            key_file: path(ENV_TLS_KEY),
        }
    }

    /// Trusts the CA(s) in this PEM file too.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Shows this client certificate (PEM) with its private key (PEM).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Reads and checks the files, for an `amqps://` URL (`tls_url`) or an
    /// `amqp://` one.
    pub(crate) fn load(&self, tls_url: bool) -> Result<OwnedTLSConfig, Error> {
        if !tls_url {
            if self.is_set() {
                return Err(Error::Config(
                    "TLS files are set (--tls-ca/--tls-cert/--tls-key or AMQP_TLS_*) but the AMQP URL is amqp://, which is not encrypted; use amqps://".into(),
                ));
            }
            return Ok(OwnedTLSConfig::default());
        }
        let cert_chain = match &self.ca_file {
            Some(path) => {
                let pem = read("CA", path)?;
                let certificates = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| invalid("CA", path, error.to_string()))?;
                if certificates.is_empty() {
                    return Err(invalid("CA", path, "no PEM certificate in it".into()));
                }
                Some(String::from_utf8(pem).map_err(|_| invalid("CA", path, "not UTF-8".into()))?)
            }
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(identity(cert, key)?),
            (Some(_), None) => {
                return Err(Error::Config(
                    "a TLS client certificate is set without its key; pass --tls-key (AMQP_TLS_KEY) too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "a TLS client key is set without its certificate; pass --tls-cert (AMQP_TLS_CERT) too".into(),
                ));
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// The client certificate and key, checked to parse.
fn identity(cert: &Path, key: &Path) -> Result<OwnedIdentity, Error> {
    let pem = read("client certificate", cert)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("client certificate", cert, error.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid(
            "client certificate",
            cert,
            "no PEM certificate in it".into(),
        ));
    }
    let key_pem = read("client key", key)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        invalid(
            "client key",
            key,
            format!("{error} (an unencrypted PEM private key is needed)"),
        )
    })?;
    Ok(OwnedIdentity::PKCS8 { pem, key: key_pem })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        what,
        path: path.to_owned(),
        reason: source.to_string(),
    })
}

fn invalid(what: &'static str, path: &Path, reason: String) -> Error {
    Error::TlsFile {
        what,
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_for_a_plain_url_are_refused_rather_than_ignored() {
        let error = Tls::default().ca_file("/ca.pem").load(false).unwrap_err();
        assert!(error.to_string().contains("amqps://"), "{error}");
        assert!(Tls::default().load(false).is_ok());
    }

    #[test]
    fn a_certificate_needs_its_key_and_files_must_hold_pem() {
        let tls = Tls {
            cert_file: Some("/cert.pem".into()),
            ..Tls::default()
        };
        assert!(
            tls.load(true)
                .unwrap_err()
                .to_string()
                .contains("--tls-key")
        );
        let missing = Tls::default()
            .ca_file("/nonexistent/ca.pem")
            .load(true)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("CA") && missing.contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        let not_pem = std::env::temp_dir().join(format!("eda-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").expect("write");
        let error = Tls::default()
            .ca_file(&not_pem)
            .load(true)
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&not_pem).expect("remove");
        assert!(error.contains("no PEM certificate"), "{error}");
    }
}
