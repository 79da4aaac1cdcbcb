//! What each option's value may be: the literal it is written with, then the
//! checks that turn that literal into the option's typed value.

use std::time::Duration;

use syn::{Expr, ExprLit, ExprUnary, Lit, LitBool, LitInt, LitStr, UnOp};

/// A kind of literal an option is written with.
pub(super) trait Literal: Sized {
    /// What the option takes, for "`retries` takes an integer literal".
    const WHAT: &'static str;

    fn from_lit(lit: &Lit) -> Option<Self>;

    /// `value` as this literal, or an error spanned on it that names
    /// `option` and shows `example`.
    fn from_value(value: &Expr, option: &str, example: &str) -> syn::Result<Self> {
        let literal = |expr: &Expr| match expr {
            Expr::Lit(ExprLit { lit, .. }) => Self::from_lit(lit),
            _ => None,
        };
        if let Some(literal) = literal(value) {
            return Ok(literal);
        }
        let integer = |expr: &Expr| {
            matches!(
                expr,
                Expr::Lit(ExprLit {
                    lit: Lit::Int(_),
                    ..
                })
            )
        };
        let message = match value {
            // `-1` is a negation, not a literal: when the option takes an
            // integer, say what is wrong with it.
            Expr::Unary(ExprUnary {
                op: UnOp::Neg(_),
                expr,
                ..
            }) if integer(expr) && literal(expr).is_some() => {
                format!("`{option}` cannot be negative")
            }
            _ => format!("`{option}` takes {}, e.g. {option} = {example}", Self::WHAT),
        };
        Err(syn::Error::new_spanned(value, message))
    }
}

/// Implements [`Literal`] for the type each `Lit` variant holds.
macro_rules! literals {
    ($($variant:ident($literal:ty) is $what:literal;)*) => {$(
        impl Literal for $literal {
            const WHAT: &'static str = $what;

            fn from_lit(lit: &Lit) -> Option<Self> {
                match lit {
                    Lit::$variant(lit) => Some(lit.clone()),
                    _ => None,
                }
            }
        }
    )*};
}

literals! {
    Str(LitStr) is "a string literal";
    Int(LitInt) is "an integer literal";
    Bool(LitBool) is "`true` or `false`";
}

pub(super) fn retries(lit: &LitInt) -> syn::Result<u32> {
    lit.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`retries` must be at most {}", u32::MAX),
        )
    })
}

/// The job's name on the wire: not blank, and an AMQP short string.
pub(super) fn wire_name(lit: &LitStr) -> syn::Result<String> {
    let name = lit.value();
    if name.trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "job name must not be empty"));
    }
    if name.len() > 255 {
        return Err(syn::Error::new(
            lit.span(),
            "job name must be at most 255 bytes (it is an AMQP short string)",
        ));
    }
    Ok(name)
}

/// A raw binding, `"EXCHANGE:ROUTING_KEY"`: an exchange name RabbitMQ
/// accepts (`amq.topic` included: binding to it is allowed) and a key or
/// topic pattern that fits in a short string.
pub(super) fn binding(lit: &LitStr) -> syn::Result<(String, String)> {
    let text = lit.value();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let message = match text.split_once(':') {
        None => format!(
            "`bind` takes \"EXCHANGE:ROUTING_KEY\", e.g. bind = \"orders:order.#\"; found {text:?}"
        ),
        Some(("", _)) => "the exchange of `bind` must not be empty: write \"EXCHANGE:ROUTING_KEY\", e.g. \"orders:order.#\"".to_owned(),
        Some((exchange, _)) if exchange.len() > 255 => format!(
            "exchange name is {} bytes long; AMQP allows at most 255",
            exchange.len()
        ),
        Some((exchange, _)) if exchange.contains(|c: char| !allowed(c)) => format!(
            "invalid character {:?} in the exchange of `bind`; use letters, digits, `.`, `_` and `-`",
            exchange.chars().find(|&c| !allowed(c)).unwrap_or_default()
        ),
        Some((_, key)) if key.len() > 255 => format!(
            "routing key is {} bytes long; AMQP allows at most 255",
            key.len()
        ),
        Some((exchange, key)) => return Ok((exchange.to_owned(), key.to_owned())),
    };
    Err(syn::Error::new(lit.span(), message))
}

pub(super) fn timeout(lit: &LitStr) -> syn::Result<Duration> {
    duration(lit, &lit.value(), "timeout")
}

/// A humantime duration above zero; `what` names it in messages.
fn duration(lit: &LitStr, text: &str, what: &str) -> syn::Result<Duration> {
    const EXAMPLES: &str = "e.g. \"30s\", \"5m\" or \"1h 30m\"";
    let message = match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => format!("{what} must be longer than zero"),
        Ok(duration) => return Ok(duration),
        Err(humantime::DurationError::Empty) => {
            format!("{what} must not be empty; write {EXAMPLES}")
        }
        Err(humantime::DurationError::UnknownUnit { unit, .. }) => {
            format!("unknown unit {unit:?} in {what} {text:?}; use ms, s, m, h or d, {EXAMPLES}")
        }
        Err(humantime::DurationError::NumberOverflow) => format!("{what} {text:?} is too long"),
        Err(_) => format!("invalid {what} {text:?}: write a number and a unit, {EXAMPLES}"),
    };
    Err(syn::Error::new(lit.span(), message))
}

/// `"MIN..MAX"`, e.g. `"1s..10m"`.
pub(super) fn backoff(lit: &LitStr) -> syn::Result<(Duration, Duration)> {
    let text = lit.value();
    let Some((min, max)) = text.split_once("..") else {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`backoff` takes the shortest and longest delay as \"MIN..MAX\", e.g. backoff = \"1s..10m\"; found {text:?}"
            ),
        ));
    };
    let min = duration(lit, min.trim(), "backoff minimum")?;
    let max = duration(lit, max.trim(), "backoff maximum")?;
    if min > max {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "backoff minimum ({}) is longer than its maximum ({})",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok((min, max))
}

pub(super) fn dedup(lit: &LitBool) -> syn::Result<bool> {
    Ok(lit.value)
}

/// The `queue_type` option: the kind of RabbitMQ queue the job queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueTypeAttr {
    Classic,
    Quorum,
}

/// `"classic"` or `"quorum"`.
pub(super) fn queue_type(lit: &LitStr) -> syn::Result<QueueTypeAttr> {
    match lit.value().as_str() {
        "classic" => Ok(QueueTypeAttr::Classic),
        "quorum" => Ok(QueueTypeAttr::Quorum),
        other => Err(syn::Error::new(
            lit.span(),
            format!("unknown queue type {other:?}: `queue_type` is \"classic\" or \"quorum\""),
        )),
    }
}
