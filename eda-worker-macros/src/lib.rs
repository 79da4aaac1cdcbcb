#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
//! The `#[job]` attribute of [eda-worker](https://docs.rs/eda-worker).
//!
//! This crate only turns syntax into uses of `eda_worker`'s public items;
//! everything the job does at run time lives in `eda_worker`. Use it through
//! `eda_worker::prelude::*`:
//!
//! ```ignore
//! use eda_worker::prelude::*;
//!
//! #[job(queue = "email", retries = 3, timeout = "30s")]
//! pub async fn send_welcome(ctx: JobContext, args: Welcome) -> Result<(), JobError> {
//!     Ok(())
//! }
//! ```

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Turns an async fn into a job: a handle of its own type named after the
/// function, which implements `eda_worker::Job` and registers itself with
/// the worker.
///
/// Options: `queue = "..."` (required), `retries = N` (default 3),
/// `name = "..."` (wire name, default the function name),
/// `timeout = "30s"` (default 15 minutes).
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::job(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
