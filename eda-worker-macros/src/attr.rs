//! Parsing `#[job(...)]` options into a typed struct, with errors spanned on
//! the offending token.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Token};

mod kw {
    syn::custom_keyword!(queue);
    syn::custom_keyword!(retries);
    syn::custom_keyword!(name);
    syn::custom_keyword!(timeout);
}

/// The longest queue name: AMQP allows 255 bytes, and `.dlq` is appended.
const MAX_QUEUE_NAME: usize = 255 - ".dlq".len();

/// The options of one `#[job(...)]`.
#[derive(Default)]
pub(crate) struct JobAttr {
    pub(crate) queue: Option<String>,
    pub(crate) retries: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

impl Parse for JobAttr {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut attr = JobAttr::default();
        let mut errors: Option<syn::Error> = None;
        let mut push = |error: syn::Error| match &mut errors {
            Some(all) => all.combine(error),
            None => errors = Some(error),
        };
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::queue) {
                let key = input.parse::<kw::queue>()?;
                let value = parse_value(input)?;
                let parsed = string_value(&value, "queue", "\"email\"").and_then(|lit| queue_name(&lit));
                record(&mut attr.queue, key.span, "queue", parsed, &mut push);
            } else if lookahead.peek(kw::retries) {
                let key = input.parse::<kw::retries>()?;
                let value = parse_value(input)?;
                let parsed = int_value(&value, "retries", "3").and_then(|lit| lit.base10_parse::<u32>());
                record(&mut attr.retries, key.span, "retries", parsed, &mut push);
            } else if lookahead.peek(kw::name) {
                let key = input.parse::<kw::name>()?;
                let value = parse_value(input)?;
                let parsed = string_value(&value, "name", "\"send_welcome\"").and_then(|lit| wire_name(&lit));
                record(&mut attr.name, key.span, "name", parsed, &mut push);
            } else if lookahead.peek(kw::timeout) {
                let key = input.parse::<kw::timeout>()?;
                let value = parse_value(input)?;
                let parsed = string_value(&value, "timeout", "\"30s\"").and_then(|lit| timeout(&lit));
                record(&mut attr.timeout, key.span, "timeout", parsed, &mut push);
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        match errors {
            Some(errors) => Err(errors),
            None => Ok(attr),
        }
    }
}

impl JobAttr {
    /// The required `queue`, or an error at the attribute.
    pub(crate) fn require_queue(&self) -> syn::Result<&str> {
        self.queue.as_deref().ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing required option `queue`: write #[job(queue = \"email\")]",
            )
        })
    }
}

fn parse_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse::<Expr>()
}

/// Stores an option's value; a repeated option is an error on its second key.
fn record<T>(
    slot: &mut Option<T>,
    key: Span,
    name: &str,
    parsed: syn::Result<T>,
    push: &mut impl FnMut(syn::Error),
) {
    if slot.is_some() {
        push(syn::Error::new(key, format!("duplicate option `{name}`")));
        return;
    }
    match parsed {
        Ok(value) => *slot = Some(value),
        Err(error) => push(error),
    }
}

fn string_value(value: &Expr, option: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{option}` takes a string literal, e.g. {option} = {example}"),
        )),
    }
}

fn int_value(value: &Expr, option: &str, example: &str) -> syn::Result<LitInt> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => Ok(lit.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{option}` takes an integer literal, e.g. {option} = {example}"),
        )),
    }
}

fn queue_name(lit: &LitStr) -> syn::Result<String> {
    let queue = lit.value();
    let problem = if queue.is_empty() {
        Some("queue name must not be empty".to_owned())
    } else if queue.len() > MAX_QUEUE_NAME {
        Some(format!("queue name is {} bytes long; at most {MAX_QUEUE_NAME} fit (`.dlq` is appended)", queue.len()))
    } else if queue.starts_with("amq.") {
        Some("queue names starting with `amq.` are reserved by RabbitMQ".to_owned())
    } else if let Some(bad) = queue.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        Some(format!("invalid character {bad:?} in queue name; use letters, digits, `.`, `_`, `-` and `:`"))
    } else {
        None
    };
    match problem {
        Some(message) => Err(syn::Error::new(lit.span(), message)),
        None => Ok(queue),
    }
}

fn wire_name(lit: &LitStr) -> syn::Result<String> {
    let name = lit.value();
    if name.trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "job name must not be empty"));
    }
    if name.len() > 255 {
        return Err(syn::Error::new(lit.span(), "job name must be at most 255 bytes (it is an AMQP short string)"));
    }
    Ok(name)
}

fn timeout(lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    match humantime::parse_duration(&text) {
        Ok(duration) if duration.is_zero() => Err(syn::Error::new(lit.span(), "timeout must be longer than zero")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(syn::Error::new(
            lit.span(),
            format!("invalid timeout {text:?}: {error}; write e.g. \"30s\", \"5m\" or \"1h 30m\""),
        )),
    }
}
