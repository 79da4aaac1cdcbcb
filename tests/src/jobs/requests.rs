//! The jobs of the request-reply tests: a price quote that replies.

use eda_worker::prelude::*;

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteRequest {
    /// The item: `unknown` fails for good, `flaky` fails its first attempt.
    pub item: String,
    /// How many.
    pub quantity: u32,
}

/// The reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    /// The item.
    pub item: String,
    /// The price of the quantity asked for.
    pub cents: i64,
}

/// Quotes 250 cents apiece, recording each run.
#[job(queue = "eda-test.rpc.quotes", retries = 2, backoff = "100ms..100ms")]
pub async fn quote(ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    crate::jobs::record(&ctx, &request);
    match request.item.as_str() {
        "unknown" => Err(JobError::permanent("no such item")),
        "flaky" if ctx.attempt() == 0 => Err(JobError::msg("the price list is reloading")),
        _ => Ok(Quote {
            cents: 250 * i64::from(request.quantity),
            item: request.item,
        }),
    }
}

/// [`quote`] on a queue of its own, for the dedup test (with a database).
#[job(queue = "eda-test.rpc.quotes-dedup")]
pub async fn quote_once(ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    quote.call(ctx, request).await
}

/// [`quote`] for the `client.call` tests.
#[job(queue = "eda-test.call.prices", retries = 2, backoff = "100ms..100ms")]
pub async fn price(ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    quote.call(ctx, request).await
}

/// [`quote`] for the concurrent and nested calls.
#[job(queue = "eda-test.call.many-prices")]
pub async fn bulk_price(ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    quote.call(ctx, request).await
}

/// Records that it started, then takes five seconds to quote.
#[job(queue = "eda-test.call.slow-prices")]
pub async fn slow_price(ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    crate::jobs::record(&ctx, &request);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    Ok(Quote {
        item: request.item,
        cents: 0,
    })
}

/// Calls [`bulk_price`] from a handler: a nested call.
#[job(queue = "eda-test.call.totals")]
pub async fn total(_ctx: JobContext, quantity: u32) -> Result<i64, JobError> {
    let client = eda_worker::Client::connect(&crate::amqp_url())
        .await
        .map_err(JobError::retryable)?;
    let request = QuoteRequest {
        item: "tea".into(),
        quantity,
    };
    // (Not `let quote`: that names the job handle, a unit struct.)
    let priced = client
        .call(bulk_price, request, std::time::Duration::from_secs(10))
        .await
        .map_err(JobError::retryable)?;
    let _ = client.close().await;
    Ok(priced.cents + 100)
}

/// Calls [`total`] from a handler: the outer call of A -> B -> C.
#[job(queue = "eda-test.call.invoices")]
pub async fn invoice_total(_ctx: JobContext, quantity: u32) -> Result<i64, JobError> {
    let client = eda_worker::Client::connect(&crate::amqp_url())
        .await
        .map_err(JobError::retryable)?;
    let sum = client
        .call(total, quantity, std::time::Duration::from_secs(15))
        .await
        .map_err(JobError::retryable)?;
    let _ = client.close().await;
    Ok(sum * 2)
}

/// Quotes at once, or after `item` = `"wait"`'s half second.
#[job(queue = "eda-test.call.mixed-prices")]
pub async fn mixed_price(_ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    if request.item == "wait" {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(Quote {
        cents: i64::from(request.quantity),
        item: request.item,
    })
}
