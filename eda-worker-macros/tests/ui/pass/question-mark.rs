// `?` turns any std error into a retryable `JobError`.
use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub path: String,
}

#[job(queue = "reports")]
pub async fn read_report(_ctx: JobContext, args: Report) -> Result<(), JobError> {
    let text = std::fs::read_to_string(&args.path)?;
    let _ = text;
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let args = Report {
        path: "/this/path/does/not/exist".to_owned(),
    };
    let error = runtime
        .block_on(read_report.call(JobContext::for_test(), args))
        .unwrap_err();
    assert!(!error.is_permanent());
    assert!(error.source_error().is::<std::io::Error>());
}
