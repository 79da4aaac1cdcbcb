//! Flow control: the broker never has more unacked messages out than the
//! prefetch, and no more handlers run at once than the concurrency.

use std::sync::atomic::Ordering;

use eda_worker_tests::jobs::flow_control::{
    FLOW_DONE, FLOW_GATE, FLOW_MAX_RUNNING, FLOW_RUNNING, gated,
};
use eda_worker_tests::{Scene, WAIT, wait_until};

const JOBS: u32 = 20;
const PREFETCH: u16 = 5;
const CONCURRENCY: usize = 2;

#[tokio::test]
async fn prefetch_and_concurrency_bound_what_the_worker_takes() {
    let mut scene = Scene::of(gated)
        .worker_config(|config| config.prefetch(PREFETCH).concurrency(CONCURRENCY))
        .workers(0)
        .start()
        .await;
    for n in 0..JOBS {
        scene.enqueue(gated, n).await;
    }
    scene.start_worker().await;

    // Every handler blocks at the gate: the worker holds exactly `prefetch`
    // messages (the rest stay ready on the broker) and runs `concurrency` of them.
    wait_until("two handlers run", WAIT, || async {
        FLOW_RUNNING.load(Ordering::SeqCst) == CONCURRENCY
    })
    .await;
    let expected_ready = JOBS - u32::from(PREFETCH);
    wait_until("the prefetch window is full", WAIT, || async {
        scene.ready().await == expected_ready
    })
    .await;
    // Releasing nothing: the window stays where it is, the worker takes no more.
    for _ in 0..5 {
        assert_eq!(
            scene.ready().await,
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
        scene.ready().await == 0
    })
    .await;
    scene.stop_workers().await;
    assert_eq!(
        FLOW_MAX_RUNNING.load(Ordering::SeqCst),
        CONCURRENCY,
        "never more than {CONCURRENCY} at once"
    );
    assert_eq!(
        scene.ready().await,
        0,
        "all acked: nothing came back when the worker stopped"
    );
    scene.finish().await;
}
