//! Latency samples and the printed table.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Runs `operation(0..count)` from `callers` concurrent tasks, each taking the
/// next number until all are done, and times every call. eda-worker and raw
/// lapin go through this same harness.
pub(crate) async fn concurrently<F, Fut>(
    count: u64,
    callers: usize,
    operation: F,
) -> anyhow::Result<Latencies>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers.max(1) {
        let (operation, next) = (operation.clone(), next.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(samples);
                }
                let sent = Instant::now();
                operation(n).await?;
                samples.push(sent.elapsed());
            }
        });
    }
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("caller task")??);
    }
    Ok(Latencies::new(samples, started.elapsed()))
}

/// Per-operation latencies of one run, and its wall time.
pub(crate) struct Latencies {
    sorted: Vec<Duration>,
    elapsed: Duration,
}

impl Latencies {
    pub(crate) fn new(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        Latencies {
            sorted: samples,
            elapsed,
        }
    }

    /// Several runs as one: all their samples, and their summed wall time.
    pub(crate) fn merge(runs: Vec<Latencies>) -> Self {
        let elapsed = runs.iter().map(|run| run.elapsed).sum();
        let samples = runs.into_iter().flat_map(|run| run.sorted).collect();
        Latencies::new(samples, elapsed)
    }

    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.sorted.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `percent` percentile, in milliseconds.
    pub(crate) fn p(&self, percent: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let rank = ((percent / 100.0) * (self.sorted.len() - 1) as f64).round() as usize;
        self.sorted[rank.min(self.sorted.len() - 1)].as_secs_f64() * 1000.0
    }
}

/// One line: eda-worker's figure, raw lapin's, and their ratio.
pub(crate) struct Row {
    what: String,
    /// `None` for a baseline-only line.
    eda: Option<f64>,
    raw: f64,
    /// For latencies and memory, lower is better: the ratio is raw / eda.
    lower_is_better: bool,
    decimals: usize,
}

impl Row {
    pub(crate) fn throughput(what: &str, eda: f64, raw: f64) -> Self {
        Row {
            what: what.into(),
            eda: Some(eda),
            raw,
            lower_is_better: false,
            decimals: 0,
        }
    }

    pub(crate) fn latency(what: &str, eda: f64, raw: f64) -> Self {
        Row {
            what: what.into(),
            eda: Some(eda),
            raw,
            lower_is_better: true,
            decimals: 2,
        }
    }

    pub(crate) fn memory(what: &str, eda_kb: u64, raw_kb: u64) -> Self {
        Row {
            what: what.into(),
            eda: Some(eda_kb as f64 / 1024.0),
            raw: raw_kb as f64 / 1024.0,
            lower_is_better: true,
            decimals: 1,
        }
    }

    /// An eda-worker figure with no raw lapin counterpart (lower is better).
    pub(crate) fn eda_only(what: &str, eda: f64) -> Self {
        Row {
            what: what.into(),
            eda: Some(eda),
            raw: f64::NAN,
            lower_is_better: true,
            decimals: 1,
        }
    }

    /// A raw lapin figure with no eda-worker counterpart, for reference.
    pub(crate) fn baseline(what: &str, raw: f64) -> Self {
        Row {
            what: what.into(),
            eda: None,
            raw,
            lower_is_better: false,
            decimals: 0,
        }
    }

    fn ratio(&self) -> Option<f64> {
        let eda = self.eda?;
        if self.raw.is_nan() {
            return None;
        }
        Some(if self.lower_is_better {
            self.raw / eda
        } else {
            eda / self.raw
        })
    }
}

/// The benchmark's table.
#[derive(Default)]
pub(crate) struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub(crate) fn push(&mut self, row: Row) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|row| row.what.len())
            .max()
            .unwrap_or(0);
        writeln!(
            f,
            "\n| {:<width$} | {:>12} | {:>12} | {:>6} |",
            "figure", "eda-worker", "raw lapin", "ratio"
        )?;
        writeln!(
            f,
            "|{}|{}|{}|{}|",
            "-".repeat(width + 2),
            "-".repeat(14),
            "-".repeat(14),
            "-".repeat(8)
        )?;
        for row in &self.rows {
            let d = row.decimals;
            let eda = row
                .eda
                .map_or_else(|| "-".to_owned(), |eda| format!("{eda:.d$}"));
            let ratio = row
                .ratio()
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x"));
            let raw = if row.raw.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.d$}", row.raw)
            };
            writeln!(
                f,
                "| {:<width$} | {eda:>12} | {raw:>12} | {ratio:>6} |",
                row.what
            )?;
        }
        write!(
            f,
            "\nratio: eda-worker relative to raw lapin, higher is better (for latency and memory: raw / eda-worker)"
        )
    }
}
