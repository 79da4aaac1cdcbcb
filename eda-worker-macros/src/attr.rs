//! Parsing `#[job(...)]` options into a typed struct, with errors spanned on
//! the offending token.
//!
//! Every option is `key = value`, read by one generic parser
//! (`OptionParser::parse`); what each value may be lives in `values` and
//! `queue_name`.

mod queue_name;
mod values;

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, Parse, ParseStream, Parser};
use syn::{Expr, Ident, Token};

use self::queue_name::queue_name;
use self::values::{Literal, backoff, binding, dedup, queue_type, retries, timeout, wire_name};

pub(crate) use self::event::{EventAttr, KindAttr};
pub(crate) use self::values::QueueTypeAttr;

/// An option's keyword, as `syn::custom_keyword!` declares it, with the name
/// it answers to.
trait Key: Parse {
    const NAME: &'static str;

    fn span(&self) -> Span;
}

/// Declares a module of the keyword of each option of one attribute, and the
/// list of them all for messages, from one list of names, so the two cannot
/// drift apart.
macro_rules! options {
    ($module:ident, $list:ident: $($key:ident),* $(,)?) => {
        mod $module {
            $(
                syn::custom_keyword!($key);

                impl super::Key for $key {
                    const NAME: &'static str = stringify!($key);

                    fn span(&self) -> proc_macro2::Span {
                        self.span
                    }
                }
            )*
        }

        /// The options the attribute accepts, in the order messages list them.
        const $list: &[&str] = &[$(stringify!($key)),*];
    };
}

options!(kw, OPTIONS: queue, retries, name, timeout, backoff, queue_type, dedup, on, bind);

// After the macro, which it uses.
mod event;

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
    pub(crate) queue_type: Option<QueueTypeAttr>,
    /// Inbox dedup, when written.
    pub(crate) dedup: Option<bool>,
    /// The event type the job subscribes to.
    pub(crate) on: Option<syn::Path>,
    /// Raw bindings: `(exchange, routing key)`.
    pub(crate) bind: Vec<(String, String)>,
    /// Where `name` and `bind` were written, for the errors of combining
    /// them with `on`.
    name_span: Option<Span>,
    bind_span: Option<Span>,
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
        attr.complete = parse_all(tokens, errors, |input, errors| {
            attr.parse_options(input, errors)
        });
        attr
    }

    /// Reads `key = value, ...`. A wrong value or an unknown key is pushed
    /// onto `errors` and parsing goes on; only broken syntax stops it.
    fn parse_options(&mut self, input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<()> {
        let mut options = OptionParser {
            input,
            given: &mut self.given,
            errors,
            options: OPTIONS,
        };
        each_option(input, |lookahead| {
            if lookahead.peek(kw::queue) {
                options.parse::<kw::queue, _, _>(&mut self.queue, "\"email\"", queue_name)?;
            } else if lookahead.peek(kw::retries) {
                options.parse::<kw::retries, _, _>(&mut self.retries, "3", retries)?;
            } else if lookahead.peek(kw::name) {
                self.name_span = Some(input.span());
                options.parse::<kw::name, _, _>(&mut self.name, "\"send_welcome\"", wire_name)?;
            } else if lookahead.peek(kw::timeout) {
                options.parse::<kw::timeout, _, _>(&mut self.timeout, "\"30s\"", timeout)?;
            } else if lookahead.peek(kw::backoff) {
                options.parse::<kw::backoff, _, _>(&mut self.backoff, "\"1s..10m\"", backoff)?;
            } else if lookahead.peek(kw::queue_type) {
                options.parse::<kw::queue_type, _, _>(
                    &mut self.queue_type,
                    "\"quorum\"",
                    queue_type,
                )?;
            } else if lookahead.peek(kw::dedup) {
                options.parse::<kw::dedup, _, _>(&mut self.dedup, "false", dedup)?;
            } else if lookahead.peek(kw::on) {
                options.parse_path::<kw::on>(&mut self.on, "OrderPlaced")?;
            } else if lookahead.peek(kw::bind) {
                self.bind_span.get_or_insert(input.span());
                options.parse_repeated::<kw::bind, _, _>(
                    &mut self.bind,
                    "\"orders:order.#\"",
                    binding,
                )?;
            } else if input.peek(Ident::peek_any) {
                options.skip_unknown()?;
            } else {
                return Err(lookahead.error());
            }
            Ok(())
        })
    }

    /// Reports the options that cannot go with `on`: the event gives the
    /// wire name, and its binding is the job's.
    pub(crate) fn check_subscription(&self, errors: &mut Errors) {
        if self.on.is_none() {
            return;
        }
        if let Some(span) = self.name_span {
            errors.push(syn::Error::new(
                span,
                "`name` cannot go with `on`: the job runs the messages of the event's wire name; set it with #[event(name = \"...\")]",
            ));
        }
        if let Some(span) = self.bind_span {
            errors.push(syn::Error::new(
                span,
                "`bind` cannot go with `on`: a job either subscribes to an event type (`on`) or takes raw bindings (`bind`)",
            ));
        }
    }

    /// The queue; when it is missing, an error at the attribute and a placeholder.
    ///
    /// An invalid `queue`, or one lost to a syntax error, has been reported
    /// already.
    pub(crate) fn queue(&self, errors: &mut Errors) -> &str {
        if self.queue.is_none() && self.complete && !self.given.contains(&kw::queue::NAME) {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing required option `queue`: write #[job(queue = \"email\")]",
            ));
        }
        self.queue.as_deref().unwrap_or_default()
    }
}

/// Runs `parse_options` over an attribute's tokens; false when broken syntax
/// stopped it before the end (the error is on `errors`).
fn parse_all(
    tokens: TokenStream,
    errors: &mut Errors,
    parse_options: impl FnOnce(ParseStream<'_>, &mut Errors) -> syn::Result<()>,
) -> bool {
    let parsed = (|input: ParseStream<'_>| parse_options(input, errors)).parse2(tokens);
    match parsed {
        Ok(()) => true,
        Err(error) => {
            errors.push(error);
            false
        }
    }
}

/// Reads `key = value, ...`: `option` reads the one at the cursor, given a
/// lookahead to tell which key it is.
fn each_option(
    input: ParseStream<'_>,
    mut option: impl FnMut(Lookahead1<'_>) -> syn::Result<()>,
) -> syn::Result<()> {
    while !input.is_empty() {
        option(input.lookahead1())?;
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(())
}

/// Reads one `key = value` option at a time, remembering which keys it has
/// seen and collecting the errors of their values.
struct OptionParser<'a, 'i> {
    input: ParseStream<'i>,
    given: &'a mut Vec<&'static str>,
    errors: &'a mut Errors,
    /// Every option of the attribute, for the message on an unknown one.
    options: &'static [&'static str],
}

impl OptionParser<'_, '_> {
    /// Parses `K = value`: the value must be the literal `L` (`example`
    /// shows one in the message when it is not), which `check` turns into
    /// the option's value, stored in `out`.
    ///
    /// A key given before is an error spanned on this second key, and its
    /// value is neither checked nor kept. Only broken syntax (no `=`, no
    /// expression) returns `Err`; a wrong value is pushed onto the errors,
    /// so the other options are still read and checked.
    fn parse<K: Key, L: Literal, T>(
        &mut self,
        out: &mut Option<T>,
        example: &str,
        check: impl FnOnce(&L) -> syn::Result<T>,
    ) -> syn::Result<()> {
        let Some(value) = self.first_value::<K>()? else {
            return Ok(());
        };
        match L::from_value(&value, K::NAME, example).and_then(|literal| check(&literal)) {
            Ok(value) => *out = Some(value),
            Err(error) => self.errors.push(error),
        }
        Ok(())
    }

    /// Reads `K = value`: the value, or `None` when `K` was given before
    /// (an error spanned on this second key).
    fn first_value<K: Key>(&mut self) -> syn::Result<Option<Expr>> {
        let key = self.input.parse::<K>()?;
        let value = parse_value(self.input)?;
        if self.given.contains(&K::NAME) {
            self.errors.push(syn::Error::new(
                key.span(),
                format!("duplicate option `{}`", K::NAME),
            ));
            return Ok(None);
        }
        self.given.push(K::NAME);
        Ok(Some(value))
    }

    /// Parses `K = Path`: an option that takes a type, such as `on = OrderPlaced`.
    fn parse_path<K: Key>(
        &mut self,
        out: &mut Option<syn::Path>,
        example: &str,
    ) -> syn::Result<()> {
        let Some(value) = self.first_value::<K>()? else {
            return Ok(());
        };
        match value {
            Expr::Path(syn::ExprPath {
                qself: None, path, ..
            }) => *out = Some(path),
            other => self.errors.push(syn::Error::new_spanned(
                other,
                format!(
                    "`{}` takes an event type, e.g. {} = {example}",
                    K::NAME,
                    K::NAME
                ),
            )),
        }
        Ok(())
    }

    /// Parses `K = value` for an option that may be written several times,
    /// each value checked as [`OptionParser::parse`] does and kept in `out`.
    fn parse_repeated<K: Key, L: Literal, T>(
        &mut self,
        out: &mut Vec<T>,
        example: &str,
        check: impl FnOnce(&L) -> syn::Result<T>,
    ) -> syn::Result<()> {
        self.input.parse::<K>()?;
        let value = parse_value(self.input)?;
        if !self.given.contains(&K::NAME) {
            self.given.push(K::NAME);
        }
        match L::from_value(&value, K::NAME, example).and_then(|literal| check(&literal)) {
            Ok(value) => out.push(value),
            Err(error) => self.errors.push(error),
        }
        Ok(())
    }

    /// Reports an unknown key and skips its value, if it has one.
    fn skip_unknown(&mut self) -> syn::Result<()> {
        let key = self.input.call(Ident::parse_any)?;
        self.errors.push(unknown_option(&key, self.options));
        if self.input.peek(Token![=]) {
            parse_value(self.input)?;
        }
        Ok(())
    }
}

fn parse_value(input: ParseStream<'_>) -> syn::Result<Expr> {
    input.parse::<Token![=]>()?;
    input.parse::<Expr>()
}

/// "unknown option `retry`: did you mean `retries`? (expected one of ...)".
fn unknown_option(key: &Ident, options: &[&str]) -> syn::Error {
    let written = key.unraw().to_string();
    let expected = options
        .iter()
        .map(|option| format!("`{option}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = match options.iter().find(|option| looks_like(&written, option)) {
        Some(option) => format!(
            "unknown option `{written}`: did you mean `{option}`? (expected one of {expected})"
        ),
        None => format!("unknown option `{written}`: expected one of {expected}"),
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
