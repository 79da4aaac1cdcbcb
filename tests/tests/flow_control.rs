//! Flow control: the broker never has more unacked messages out than the
//! prefetch, and no more handlers run at once than the concurrency.

use std::sync::atomic::Ordering;

use eda_worker::Client;
use eda_worker_tests::jobs::{
    FLOW_DONE, FLOW_GATE, FLOW_MAX_RUNNING, FLOW_QUEUE, FLOW_RUNNING, gated,
};
use eda_worker_tests::{Broker, RunningWorker, WAIT, amqp_url, wait_until, worker_config};

const JOBS: u32 = 20;
const PREFETCH: u16 = 5;
const CONCURRENCY: usize = 2;

#[tokio::test]
async fn prefetch_and_concurrency_bound_what_the_worker_takes() {
    let broker = Broker::connect().await;
    broker.reset(FLOW_QUEUE).await;
    let client = Client::connect(&amqp_url()).await.unwrap();
    for n in 0..JOBS {
        client.enqueue(gated, n).await.unwrap();
    }
    let config = worker_config().prefetch(PREFETCH).concurrency(CONCURRENCY);
    let worker = RunningWorker::start(&broker, FLOW_QUEUE, config).await;

    // Every handler blocks at the gate: the worker holds exactly `prefetch`
    // messages (the rest stay ready on the broker) and runs `concurrency` of them.
    wait_until("two handlers run", WAIT, || async {
        FLOW_RUNNING.load(Ordering::SeqCst) == CONCURRENCY
    })
    .await;
    let expected_ready = JOBS - u32::from(PREFETCH);
    wait_until("the prefetch window is full", WAIT, || async {
        broker.ready(FLOW_QUEUE).await == expected_ready
    })
    .await;
    // Releasing nothing: the window stays where it is, the worker takes no more.
    for _ in 0..5 {
        assert_eq!(
            broker.ready(FLOW_QUEUE).await,
            expected_ready,
            "never more than {PREFETCH} unacked"
        );
        assert_eq!(FLOW_RUNNING.load(Ordering::SeqCst), CONCURRENCY);
    }

    FLOW_GATE.add_permits(JOBS as usize);
    wait_until("every job ran", WAIT, || async {
        FLOW_DONE.load(Ordering::SeqCst) == JOBS as usize
    })
    .await;
    wait_until("the queue is empty", WAIT, || async {
        broker.ready(FLOW_QUEUE).await == 0
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(
        FLOW_MAX_RUNNING.load(Ordering::SeqCst),
        CONCURRENCY,
        "never more than {CONCURRENCY} at once"
    );
    assert_eq!(
        broker.ready(FLOW_QUEUE).await,
        0,
        "all acked: nothing came back when the worker stopped"
    );

    client.close().await.unwrap();
    broker.cleanup(FLOW_QUEUE).await;
}
