//! Serial tests: they take a broker user's permissions away, so `cargo test`
//! skips them (`#[ignore]`) and `.ci/run` runs them after the parallel suite,
//! one at a time (`cargo test --workspace -- --ignored --test-threads=1`).

use std::time::Duration;

use eda_worker::Job;
use eda_worker_tests::broker::{BrokerUser, unique_connection_name, wait_for_new_connection};
use eda_worker_tests::jobs::broker_faults::refusal_echo;
use eda_worker_tests::jobs::runs;
use eda_worker_tests::{Scene, WAIT, close_connection, connection_pid, wait_until};

/// How long the broker refuses the worker, as during a vhost restart or an
/// LDAP outage.
const REFUSED_FOR: Duration = Duration::from_secs(5);

#[tokio::test]
#[ignore = "serial: takes a broker user's permissions away; .ci/run runs it after the parallel suite"]
async fn a_running_worker_rides_out_a_refused_login() {
    let user = BrokerUser::create("eda-test-refusal");
    let name = unique_connection_name("eda-test-refusal");
    let url = user.url();
    let scene = Scene::of(refusal_echo)
        .worker_config(|mut config| {
            config.amqp_url = url;
            config.connection_name(&name)
        })
        .start()
        .await;
    let queue = <refusal_echo as Job>::QUEUE;
    scene.enqueue(refusal_echo, 1).await;
    wait_until("the first job ran", WAIT, || async {
        runs(queue).len() == 1
    })
    .await;

    user.revoke();
    let pid = connection_pid(&name).expect("the worker's connection is listed");
    close_connection(&pid);
    // Not a wait for a condition: this is how long the outage lasts.
    tokio::time::sleep(REFUSED_FOR).await;
    assert!(
        scene.workers_running(),
        "a refused login does not stop a running worker"
    );
    user.grant();
    wait_for_new_connection(&name, &pid).await;

    scene.enqueue(refusal_echo, 2).await;
    wait_until("the second job ran", WAIT, || async {
        runs(queue).len() == 2
    })
    .await;
    assert!(scene.workers_running());
    scene.finish().await;
}
