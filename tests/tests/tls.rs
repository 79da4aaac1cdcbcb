//! TLS, never plaintext: jobs run over `amqps://` with a custom CA and with
//! a client certificate (EXTERNAL auth), on a RabbitMQ node of the test's own
//! with a TLS listener; an untrusted certificate is refused with an error
//! naming TLS; PostgreSQL connects with `sslmode=require`.

use std::time::Duration;

use eda_worker::postgres::{Database, Schema};
use eda_worker::{Client, ClientOptions, Error, Job, Tls, Worker, WorkerConfig};
use eda_worker_tests::certificates::{CLIENT_USER, Certificates};
use eda_worker_tests::database::database_url;
use eda_worker_tests::jobs::runs;
use eda_worker_tests::jobs::tls::tls_echo;
use eda_worker_tests::node::{Node, NodeSpec};
use eda_worker_tests::{WAIT, wait_until};
use tokio_util::sync::CancellationToken;

/// Runs `count` jobs through a worker and a client that both connect to
/// `url` with `tls`, numbered from `first`; returns once each has run.
async fn run_jobs_over(url: &str, tls: &Tls, first: u32, count: u32) {
    let queue = <tls_echo as Job>::QUEUE;
    let token = CancellationToken::new();
    let config = WorkerConfig::new(url)
        .tls(tls.clone())
        .queues([queue])
        .connect_attempts(1)
        .shutdown_timeout(Duration::from_secs(5));
    let worker = tokio::spawn(Worker::new(config).expect("config").run(token.clone()));
    let client = Client::connect_with_options(url, ClientOptions::default().tls(tls.clone()))
        .await
        .unwrap_or_else(|error| panic!("client over {url}: {error}"));
    for n in first..first + count {
        client.enqueue(tls_echo, n).await.expect("enqueue over TLS");
    }
    let ran = |n: u32| {
        runs(queue)
            .iter()
            .any(|run| run.args == serde_json::json!(n))
    };
    wait_until(
        &format!("jobs {first}..{} ran over {url}", first + count),
        WAIT,
        || async { (first..first + count).all(ran) },
    )
    .await;
    client.close().await.expect("close the client");
    token.cancel();
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker stops in time")
        .expect("worker task")
        .expect("the worker ran without error");
}

#[tokio::test]
async fn jobs_run_over_tls_with_a_custom_ca_and_with_a_client_certificate_and_an_untrusted_one_is_refused()
 {
    let certificates = Certificates::generate("tls");
    let node = Node::start(
        "tls",
        NodeSpec {
            tls: Some(&certificates),
            ..NodeSpec::default()
        },
    );

    // A custom CA, password login.
    let with_ca = Tls::default().ca_file(&certificates.ca);
    run_jobs_over(&node.amqps_url("guest:guest@", ""), &with_ca, 0, 3).await;

    // A client certificate, logged in as its common name (EXTERNAL).
    node.ctl(&["add_user", CLIENT_USER, &uuid::Uuid::new_v4().to_string()]);
    node.ctl(&["set_permissions", CLIENT_USER, ".*", ".*", ".*"]);
    let with_certificate = with_ca
        .clone()
        .client_cert(&certificates.client_cert, &certificates.client_key);
    let external = node.amqps_url("", "?auth_mechanism=external");
    let client = Client::connect_with_options(
        &external,
        ClientOptions::default().tls(with_certificate.clone()),
    )
    .await
    .expect("EXTERNAL login with the client certificate");
    let users = node.ctl(&["list_connections", "user", "auth_mechanism", "ssl"]);
    assert!(
        users.lines().any(|line| line.starts_with(CLIENT_USER)
            && line.contains("EXTERNAL")
            && line.contains("true")),
        "the broker sees a TLS connection of {CLIENT_USER} by EXTERNAL: {users}"
    );
    client.close().await.expect("close");
    run_jobs_over(&external, &with_certificate, 10, 2).await;

    // A CA that did not sign the broker's certificate: refused at once,
    // naming TLS and the host, by the client and by a starting worker.
    let wrong_ca = Tls::default().ca_file(&certificates.other_ca);
    let url = node.amqps_url("guest:guest@", "");
    let error = Client::connect_with_options(&url, ClientOptions::default().tls(wrong_ca.clone()))
        .await
        .expect_err("an untrusted certificate is refused");
    let text = error.to_string();
    assert!(
        matches!(&error, Error::Tls { host, .. } if host == "localhost"),
        "{text}"
    );
    assert!(
        text.contains("TLS") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "no password in: {text}");
    let worker = Worker::new(
        WorkerConfig::new(&url)
            .tls(wrong_ca)
            .queues([<tls_echo as Job>::QUEUE]),
    )
    .expect("config");
    let error = tokio::time::timeout(WAIT, worker.run(CancellationToken::new()))
        .await
        .expect("the worker gives up without retrying")
        .expect_err("the worker refuses to start");
    assert!(matches!(error, Error::Tls { .. }), "{error}");
    drop(node);
}

/// Whether a connection to the test database with `sslmode=mode` is encrypted.
async fn ssl_in_use(mode: &str) -> bool {
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}sslmode={mode}");
    let schema = Schema::new("eda_test_tls").expect("schema name");
    let database = Database::connect(&url, schema)
        .await
        .unwrap_or_else(|error| panic!("sslmode={mode}: {error}"));
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(database.pool())
        .await
        .expect("pg_stat_ssl");
    database.close().await;
    ssl
}

#[tokio::test]
async fn postgres_connects_over_tls_with_sslmode_require() {
    assert!(ssl_in_use("require").await, "sslmode=require encrypts");
    assert!(!ssl_in_use("disable").await, "sslmode=disable does not");
}
