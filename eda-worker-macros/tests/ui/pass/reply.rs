use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct QuoteRequest {
    pub quantity: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Quote {
    pub cents: i64,
}

/// A job that replies: its `Output` is the `T` of its `Result<T, JobError>`.
#[job(queue = "quotes")]
pub async fn quote(_ctx: JobContext, request: QuoteRequest) -> Result<Quote, JobError> {
    Ok(Quote {
        cents: 250 * i64::from(request.quantity),
    })
}

fn replies_with<J: Job<Output = Quote>>(_job: J) {}

fn main() {
    replies_with(quote);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt
        .block_on(quote.call(JobContext::for_test(), QuoteRequest { quantity: 2 }))
        .unwrap();
    assert_eq!(reply, Quote { cents: 500 });
}
