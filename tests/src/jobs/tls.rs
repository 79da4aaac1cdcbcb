//! Jobs of the TLS tests, which run on a node of their own.

use super::record_run;

crate::job_family! {
    /// Records its run.
    fn(u32) => record_run;
    // Run over amqps:// with a custom CA, and with a client certificate.
    tls_echo(queue = "eda-test.tls");
}
