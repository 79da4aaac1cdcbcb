// A raw identifier as the job's name, and parameters written as `_`,
// `_name`, `mut name` and a destructuring pattern.
use eda_worker::prelude::*;

#[derive(Serialize, Deserialize)]
pub struct Ping {
    pub count: u32,
}

// The wire name drops the `r#`.
#[job(queue = "misc")]
pub async fn r#type(_: JobContext, _args: Ping) -> Result<(), JobError> {
    Ok(())
}

#[job(queue = "misc")]
pub async fn bump(_ctx: JobContext, mut args: Ping) -> Result<(), JobError> {
    args.count += 1;
    assert_eq!(args.count, 2);
    Ok(())
}

#[job(queue = "misc")]
pub async fn destructure(_ctx: JobContext, Ping { count }: Ping) -> Result<(), JobError> {
    assert_eq!(count, 1);
    Ok(())
}

fn main() {
    assert_eq!(<r#type as Job>::NAME, "type");
    assert_eq!(<bump as Job>::NAME, "bump");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(r#type.call(JobContext::for_test(), Ping { count: 1 }))
        .unwrap();
    runtime
        .block_on(bump.call(JobContext::for_test(), Ping { count: 1 }))
        .unwrap();
    runtime
        .block_on(destructure.call(JobContext::for_test(), Ping { count: 1 }))
        .unwrap();
}
