//! Broker faults: how soon jobs run again after a forced connection close,
//! and what TLS costs a confirmed enqueue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use eda_worker::prelude::*;
use eda_worker::{ClientOptions, Tls, Worker, WorkerConfig, amqp_url_from_env};
use eda_worker_tests::certificates::Certificates;
use eda_worker_tests::node::{Node, NodeSpec};
use eda_worker_tests::proxy::Proxy;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::raw::{self, Format};
use crate::report::Latencies;

/// Queue of the reconnect figure.
pub(crate) const RECONNECT_QUEUE: &str = "eda-bench.reconnect";
/// Queue of the raw lapin reconnect baseline.
const RAW_RECONNECT_QUEUE: &str = "eda-bench.raw-reconnect";

/// A session that lived this long reconnects after the shortest pause (the
/// worker's own threshold is 5 s).
const SETTLED: Duration = Duration::from_millis(5_500);

static PROBES: AtomicU64 = AtomicU64::new(0);
static PROBED: Notify = Notify::const_new();

/// Counts its runs.
#[job(queue = "eda-bench.reconnect", retries = 0)]
pub async fn reconnect_probe(_ctx: JobContext, _n: u64) -> Result<(), JobError> {
    PROBES.fetch_add(1, Ordering::SeqCst);
    PROBED.notify_waiters();
    Ok(())
}

/// From a forced close of the worker's connections (a proxy drops them) to
/// the first job run again, `rounds` times; and the raw lapin floor: from a
/// standing start to the first delivery (connect, channel, qos, consume).
pub(crate) async fn reconnect(rounds: u64) -> anyhow::Result<(Latencies, Latencies)> {
    let url = amqp_url_from_env();
    let admin = raw::Admin::connect(&url).await?;
    admin.reset(RECONNECT_QUEUE).await?;
    admin.reset(RAW_RECONNECT_QUEUE).await?;
    let proxy = Proxy::start().await;
    let token = CancellationToken::new();
    let config = WorkerConfig::new(proxy.url()).queues([RECONNECT_QUEUE]);
    let worker = tokio::spawn(Worker::new(config)?.run(token.clone()));
    let client = Client::connect(&url).await?;
    // The worker is up once a first job ran.
    probe(&client, 0).await?;
    let mut eda = Vec::new();
    let mut floor = Vec::new();
    let started = Instant::now();
    for round in 1..=rounds {
        tokio::time::sleep(SETTLED).await;
        let cut = Instant::now();
        proxy.cut();
        probe(&client, round).await?;
        eda.push(cut.elapsed());
        floor.push(raw_first_delivery(&url).await?);
    }
    let elapsed = started.elapsed();
    token.cancel();
    worker.await.context("worker task")??;
    client.close().await?;
    admin.delete(RECONNECT_QUEUE).await?;
    admin.delete(&format!("{RECONNECT_QUEUE}.dlq")).await?;
    admin
        .delete_delays(RECONNECT_QUEUE, &eda_worker::DelayQueues::default())
        .await?;
    admin.delete(RAW_RECONNECT_QUEUE).await?;
    Ok((Latencies::new(eda, elapsed), Latencies::new(floor, elapsed)))
}

/// Enqueues a probe and waits until a worker ran it.
async fn probe(client: &Client, n: u64) -> anyhow::Result<()> {
    let before = PROBES.load(Ordering::SeqCst);
    let ran = PROBED.notified();
    tokio::pin!(ran);
    ran.as_mut().enable();
    client.enqueue(reconnect_probe, n).await?;
    tokio::time::timeout(Duration::from_secs(60), async {
        while PROBES.load(Ordering::SeqCst) == before {
            ran.as_mut().await;
            ran.set(PROBED.notified());
            ran.as_mut().enable();
        }
    })
    .await
    .context("the probe job did not run within 60 s")
}

/// A message waits in a queue; the time from nothing to its delivery.
async fn raw_first_delivery(url: &str) -> anyhow::Result<Duration> {
    raw::publish(url, RAW_RECONNECT_QUEUE, 1, 1, |n| n, Format::Bare).await?;
    let started = Instant::now();
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(1, BasicQosOptions { global: false })
        .await?;
    let mut consumer = raw::consume(&channel, RAW_RECONNECT_QUEUE, "floor").await?;
    let delivery = consumer.next().await.context("the raw consumer ended")??;
    let took = started.elapsed();
    delivery.ack(BasicAckOptions::default()).await?;
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(took)
}

/// Confirmed enqueues on a TLS node of the bench's own, over its `amqps://`
/// and its `amqp://` listener in alternating rounds, and raw lapin over
/// `amqps://`: `(eda amqps, eda amqp, raw amqps)`.
pub(crate) async fn tls_enqueue(
    count: u64,
    callers: usize,
    rounds: u64,
) -> anyhow::Result<(Latencies, Latencies, Latencies)> {
    let certificates = Certificates::generate("bench");
    let node = Node::start(
        "bench-tls",
        NodeSpec {
            tls: Some(&certificates),
            ..NodeSpec::default()
        },
    );
    let tls = Tls::default().ca_file(&certificates.ca);
    let amqps = node.amqps_url("guest:guest@", "");
    let admin = raw::Admin::connect(&node.amqp_url()).await?;
    admin.reset(crate::RAW_QUEUE).await?;
    let over_tls =
        Client::connect_with_options(&amqps, ClientOptions::default().tls(tls.clone())).await?;
    let plain = Client::connect(&node.amqp_url()).await?;
    let (mut tls_runs, mut plain_runs) = (Vec::new(), Vec::new());
    let per_round = (count / rounds.max(1)).max(1);
    for round in 0..rounds.max(1) {
        for tls_turn in [round % 2 == 0, round % 2 == 1] {
            if tls_turn {
                tls_runs.push(crate::eda_enqueue(&over_tls, per_round, callers).await?);
            } else {
                plain_runs.push(crate::eda_enqueue(&plain, per_round, callers).await?);
            }
            admin.purge(crate::EDA_QUEUE).await?;
        }
    }
    let ca = std::fs::read_to_string(&certificates.ca)?;
    let raw_tls = raw::publish_with_tls(
        &amqps,
        OwnedTLSConfig {
            identity: None,
            cert_chain: Some(ca),
        },
        crate::RAW_QUEUE,
        per_round,
        callers,
        crate::payload,
        Format::SameAsEda,
    )
    .await?;
    over_tls.close().await?;
    plain.close().await?;
    drop(node);
    Ok((
        Latencies::merge(tls_runs),
        Latencies::merge(plain_runs),
        raw_tls,
    ))
}
