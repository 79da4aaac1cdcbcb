//! Parsing `#[job(...)]` options into a typed struct, with errors spanned on
//! the offending token.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitInt, LitStr, Token, UnOp};

mod kw {
    syn::custom_keyword!(queue);
    syn::custom_keyword!(retries);
    syn::custom_keyword!(name);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(queue_type);
    syn::custom_keyword!(dedup);
}

/// The options `#[job(...)]` accepts, for messages.
const OPTIONS: [&str; 7] = [
    "queue",
    "retries",
    "name",
    "timeout",
    "backoff",
    "queue_type",
    "dedup",
];

/// The longest queue name: AMQP allows 255 bytes, and the delay queues append
/// `.delay.` and a TTL of up to 12 characters (`4294967295ms`).
const MAX_QUEUE_NAME: usize = 255 - ".delay.4294967295ms".len();

/// Several errors, reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The errors so far and `error`.
    pub(crate) fn and(self, error: syn::Error) -> syn::Error {
        match self.0 {
            Some(mut all) => {
                all.combine(error);
                all
            }
            None => error,
        }
    }

    /// The errors so far, if any.
    pub(crate) fn take(&mut self) -> Option<syn::Error> {
        self.0.take()
    }
}

/// The options of one `#[job(...)]`.
#[derive(Default)]
pub(crate) struct JobAttr {
    pub(crate) queue: Option<String>,
    pub(crate) retries: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) timeout: Option<Duration>,
    /// `(min, max)` of the retry delays.
    pub(crate) backoff: Option<(Duration, Duration)>,
    /// `true` for a quorum queue.
    pub(crate) quorum: Option<bool>,
    /// Inbox dedup, when written.
    pub(crate) dedup: Option<bool>,
    /// The options written, valid or not: a repeated one is an error, and an
    /// invalid `queue` is not also reported missing.
    given: Vec<&'static str>,
    /// False when a syntax error stopped parsing before the end.
    complete: bool,
}

impl JobAttr {
    /// Parses the options, pushing every problem onto `errors` and keeping
    /// whatever options are valid.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> JobAttr {
        let mut attr = JobAttr::default();
        let parsed = (|input: ParseStream<'_>| attr.parse_options(input, errors)).parse2(tokens);
        match parsed {
            Ok(()) => attr.complete = true,
            Err(error) => errors.push(error),
        }
        attr
    }

    fn parse_options(&mut self, input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<()> {
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::queue) {
                let key = input.parse::<kw::queue>()?;
                let value = parse_value(input)?;
                let parsed =
                    string_value(&value, "queue", "\"email\"").and_then(|lit| queue_name(&lit));
                if let Some(value) = self.accept("queue", key.span, parsed, errors) {
                    self.queue = Some(value);
                }
            } else if lookahead.peek(kw::retries) {
                let key = input.parse::<kw::retries>()?;
                let value = parse_value(input)?;
                let parsed = int_value(&value, "retries", "3").and_then(|lit| retries(&lit));
                if let Some(value) = self.accept("retries", key.span, parsed, errors) {
                    self.retries = Some(value);
                }
            } else if lookahead.peek(kw::name) {
                let key = input.parse::<kw::name>()?;
                let value = parse_value(input)?;
                let parsed = string_value(&value, "name", "\"send_welcome\"")
                    .and_then(|lit| wire_name(&lit));
                if let Some(value) = self.accept("name", key.span, parsed, errors) {
                    self.name = Some(value);
                }
            } else if lookahead.peek(kw::timeout) {
                let key = input.parse::<kw::timeout>()?;
                let value = parse_value(input)?;
                let parsed =
                    string_value(&value, "timeout", "\"30s\"").and_then(|lit| timeout(&lit));
                if let Some(value) = self.accept("timeout", key.span, parsed, errors) {
                    self.timeout = Some(value);
                }
            } else if lookahead.peek(kw::backoff) {
                let key = input.parse::<kw::backoff>()?;
                let value = parse_value(input)?;
                let parsed =
                    string_value(&value, "backoff", "\"1s..10m\"").and_then(|lit| backoff(&lit));
                if let Some(value) = self.accept("backoff", key.span, parsed, errors) {
                    self.backoff = Some(value);
                }
            } else if lookahead.peek(kw::queue_type) {
                let key = input.parse::<kw::queue_type>()?;
                let value = parse_value(input)?;
                let parsed = string_value(&value, "queue_type", "\"quorum\"")
                    .and_then(|lit| queue_type(&lit));
                if let Some(value) = self.accept("queue_type", key.span, parsed, errors) {
                    self.quorum = Some(value);
                }
            } else if lookahead.peek(kw::dedup) {
                let key = input.parse::<kw::dedup>()?;
                let value = parse_value(input)?;
                let parsed = bool_value(&value, "dedup");
                if let Some(value) = self.accept("dedup", key.span, parsed, errors) {
                    self.dedup = Some(value);
                }
            } else if input.peek(Ident::peek_any) {
                let key = input.call(Ident::parse_any)?;
                errors.push(unknown_option(&key));
                if input.peek(Token![=]) {
                    parse_value(input)?;
                }
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    }

    /// A valid option's value, unless the option was given before: a
    /// repeated option is an error on its second key.
    fn accept<T>(
        &mut self,
        name: &'static str,
        key: Span,
        parsed: syn::Result<T>,
        errors: &mut Errors,
    ) -> Option<T> {
        if self.given.contains(&name) {
            errors.push(syn::Error::new(key, format!("duplicate option `{name}`")));
            return None;
        }
        self.given.push(name);
        parsed.map_err(|error| errors.push(error)).ok()
    }

    /// The queue; when it is missing, an error at the attribute and a placeholder.
    ///
    /// An invalid `queue`, or one lost to a syntax error, has been reported
    /// already.
    pub(crate) fn queue(&self, errors: &mut Errors) -> &str {
        if self.queue.is_none() && self.complete && !self.given.contains(&"queue") {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing required option `queue`: write #[job(queue = \"email\")]",
            ));
        }
        self.queue.as_deref().unwrap_or_default()
    }
}

fn parse_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse::<Expr>()
}

fn unknown_option(key: &Ident) -> syn::Error {
    let written = key.unraw().to_string();
    let expected =
        "expected one of `queue`, `retries`, `name`, `timeout`, `backoff`, `queue_type`, `dedup`";
    let message = match OPTIONS.iter().find(|option| looks_like(&written, option)) {
        Some(option) => {
            format!("unknown option `{written}`: did you mean `{option}`? ({expected})")
        }
        None => format!("unknown option `{written}`: {expected}"),
    };
    syn::Error::new(key.span(), message)
}

/// Whether `written` is probably a misspelling of `option`.
fn looks_like(written: &str, option: &str) -> bool {
    let common_prefix = written
        .bytes()
        .zip(option.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    common_prefix >= 3 || edit_distance(written, option) <= 2
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn string_value(value: &Expr, option: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{option}` takes a string literal, e.g. {option} = {example}"),
        )),
    }
}

fn bool_value(value: &Expr, option: &str) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(lit),
            ..
        }) => Ok(lit.value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{option}` takes `true` or `false`, e.g. {option} = false"),
        )),
    }
}

fn int_value(value: &Expr, option: &str, example: &str) -> syn::Result<LitInt> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(lit.clone()),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if matches!(
            &**expr,
            Expr::Lit(ExprLit {
                lit: Lit::Int(_),
                ..
            })
        ) =>
        {
            Err(syn::Error::new_spanned(
                value,
                format!("`{option}` cannot be negative"),
            ))
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{option}` takes an integer literal, e.g. {option} = {example}"),
        )),
    }
}

fn retries(lit: &LitInt) -> syn::Result<u32> {
    lit.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`retries` must be at most {}", u32::MAX),
        )
    })
}

fn queue_name(lit: &LitStr) -> syn::Result<String> {
    let queue = lit.value();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    let message = if queue.is_empty() {
        "queue name must not be empty".to_owned()
    } else if queue.len() > MAX_QUEUE_NAME {
        format!(
            "queue name is {} bytes long; at most {MAX_QUEUE_NAME} fit (`.dlq` and `.delay.<ttl>` are appended)",
            queue.len()
        )
    } else if queue.starts_with("amq.") {
        "queue names starting with `amq.` are reserved by RabbitMQ".to_owned()
    } else if let Some(bad) = queue.chars().find(|&c| !allowed(c)) {
        format!(
            "invalid character {bad:?} in queue name; use letters, digits, `.`, `_`, `-` and `:`"
        )
    } else {
        return Ok(queue);
    };
    Err(syn::Error::new(lit.span(), message))
}

fn wire_name(lit: &LitStr) -> syn::Result<String> {
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

fn timeout(lit: &LitStr) -> syn::Result<Duration> {
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
fn backoff(lit: &LitStr) -> syn::Result<(Duration, Duration)> {
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

/// `"classic"` or `"quorum"`: true for quorum.
fn queue_type(lit: &LitStr) -> syn::Result<bool> {
    match lit.value().as_str() {
        "classic" => Ok(false),
        "quorum" => Ok(true),
        other => Err(syn::Error::new(
            lit.span(),
            format!("unknown queue type {other:?}: `queue_type` is \"classic\" or \"quorum\""),
        )),
    }
}
