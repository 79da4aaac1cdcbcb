use eda_worker::prelude::*;

#[job(queue = "email")]
pub struct Welcome;

fn main() {}
