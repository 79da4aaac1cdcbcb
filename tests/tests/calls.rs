//! `client.call`: a typed reply, the handler's permanent error carried
//! back, a retry that succeeds within the deadline, a timeout, a nested
//! call, and a lost connection that fails the pending call at once.

use std::time::{Duration, Instant};

use eda_worker::CallError;
use eda_worker::prelude::*;
use eda_worker_tests::broker::{close_connection, connection_pid, unique_connection_name};
use eda_worker_tests::jobs::requests::{
    Quote, QuoteRequest, bulk_price, invoice_total, mixed_price, price, slow_price, total,
};
use eda_worker_tests::{Scene, WAIT, amqp_url, wait_until};

fn ask(item: &str) -> QuoteRequest {
    QuoteRequest {
        item: item.to_owned(),
        quantity: 2,
    }
}

#[tokio::test]
async fn a_call_returns_the_reply_or_the_handlers_error() {
    let scene = Scene::of(price).start().await;
    let client = &scene.client;
    let wait = Duration::from_secs(10);

    let reply: Quote = client.call(price, ask("tea"), wait).await.expect("a reply");
    assert_eq!(
        reply,
        Quote {
            item: "tea".into(),
            cents: 500
        }
    );

    let error = client
        .call(price, ask("unknown"), wait)
        .await
        .expect_err("a permanent failure");
    match &error {
        CallError::Failed {
            job,
            error,
            permanent,
        } => {
            assert_eq!(*job, "price");
            assert!(error.contains("no such item"), "{error}");
            assert!(*permanent);
        }
        other => panic!("expected the handler's failure, got {other:?}"),
    }

    // Fails its first attempt: the call waits across the retry.
    let retried = client
        .call(price, ask("flaky"), wait)
        .await
        .expect("a reply after the retry");
    assert_eq!(retried.item, "flaky");

    scene.finish().await;
}

#[tokio::test]
async fn many_concurrent_calls_and_a_nested_one() {
    let mut scene = Scene::of(total)
        .also(bulk_price)
        .also(invoice_total)
        .workers(0)
        .start()
        .await;
    scene.start_worker_on(<bulk_price as Job>::QUEUE).await;
    scene.start_worker_on(<total as Job>::QUEUE).await;
    scene.start_worker_on(<invoice_total as Job>::QUEUE).await;
    let client = &scene.client;

    let calls = futures_util::future::join_all((1..=200u32).map(|quantity| {
        client.call(
            bulk_price,
            QuoteRequest {
                item: "tea".into(),
                quantity,
            },
            Duration::from_secs(30),
        )
    }))
    .await;
    for (quantity, reply) in (1..=200i64).zip(calls) {
        assert_eq!(
            reply.expect("a reply").cents,
            250 * quantity,
            "each call its own reply"
        );
    }

    // total calls price from its handler.
    let sum: i64 = client
        .call(total, 4, Duration::from_secs(20))
        .await
        .expect("the nested call's reply");
    assert_eq!(sum, 1_100);
    // A -> B -> C: invoice_total calls total, which calls bulk_price.
    let invoiced: i64 = client
        .call(invoice_total, 4, Duration::from_secs(30))
        .await
        .expect("the doubly nested call's reply");
    assert_eq!(invoiced, 2_200);
    assert_eq!(client.calls_in_flight().await, 0);
    scene.finish().await;
}

#[tokio::test]
async fn a_timeout_and_a_lost_connection_end_the_call() {
    let scene = Scene::of(slow_price).start().await;
    let queue = <slow_price as Job>::QUEUE;
    let started = Instant::now();
    let error = scene
        .client
        .call(slow_price, ask("late"), Duration::from_millis(300))
        .await
        .expect_err("no reply in time");
    assert!(
        matches!(
            error,
            CallError::Timeout {
                job: "slow_price",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout is the caller's"
    );

    let name = unique_connection_name("eda-test-call-lost");
    let client = Client::connect_named(&amqp_url(), &name)
        .await
        .expect("connect");
    let pending = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call(slow_price, ask("lost"), Duration::from_secs(30))
                .await
        }
    });
    // The request is in flight once the worker runs it.
    wait_until("the request is being handled", WAIT, || async {
        eda_worker_tests::jobs::runs(queue)
            .iter()
            .any(|run| run.args["item"] == "lost")
    })
    .await;
    let pid = connection_pid(&name).expect("the client's connection is listed");
    let closed = Instant::now();
    close_connection(&pid);
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the call ends")
        .expect("call task");
    assert!(
        matches!(
            outcome,
            Err(CallError::ConnectionLost { job: "slow_price" })
        ),
        "{outcome:?}"
    );
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "within 1 s of the loss: {:?}",
        closed.elapsed()
    );
    scene.finish().await;
}

#[tokio::test]
async fn a_thousand_calls_some_timing_out_leave_none_pending() {
    let scene = Scene::of(mixed_price)
        .worker_config(|config| config.concurrency(64))
        .start()
        .await;
    let client = &scene.client;
    let calls = futures_util::future::join_all((0..1_000u32).map(|n| {
        // One in ten waits half a second for a call that gives up at 100 ms.
        let (item, timeout) = if n % 10 == 0 {
            ("wait", Duration::from_millis(100))
        } else {
            ("now", Duration::from_secs(30))
        };
        client.call(
            mixed_price,
            QuoteRequest {
                item: item.to_owned(),
                quantity: n,
            },
            timeout,
        )
    }))
    .await;
    let (mut replies, mut timeouts) = (0, 0);
    for (n, call) in (0..1_000i64).zip(calls) {
        match call {
            Ok(reply) => {
                assert_eq!(reply.cents, n, "each call its own reply");
                replies += 1;
            }
            Err(CallError::Timeout { .. }) => timeouts += 1,
            Err(other) => panic!("call {n}: {other:?}"),
        }
    }
    assert_eq!(replies, 900);
    assert_eq!(timeouts, 100);
    assert_eq!(client.calls_in_flight().await, 0, "no call is left pending");
    scene.finish().await;
}
