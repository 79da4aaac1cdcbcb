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
