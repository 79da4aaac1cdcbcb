//! Parsing `#[event(...)]`, the options of `#[derive(Event)]`, with the
//! same parser as `#[job(...)]`'s.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::ParseStream;
use syn::{Ident, LitStr};

use super::values::wire_name;
use super::{Errors, Key, OptionParser, each_option, parse_all};

options!(event_kw, EVENT_OPTIONS: exchange, kind, routing_key, name);

/// The kind of an event's exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KindAttr {
    Topic,
    Fanout,
    Direct,
}

/// The options of one `#[event(...)]`.
#[derive(Default)]
pub(crate) struct EventAttr {
    pub(crate) exchange: Option<String>,
    pub(crate) kind: Option<KindAttr>,
    pub(crate) routing_key: Option<LitStr>,
    pub(crate) name: Option<String>,
    given: Vec<&'static str>,
    complete: bool,
}

impl EventAttr {
    /// Parses the options of an `#[event(...)]`, pushing every problem onto
    /// `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> EventAttr {
        let mut attr = EventAttr::default();
        attr.complete = parse_all(tokens, errors, |input, errors| {
            attr.parse_options(input, errors)
        });
        attr
    }

    fn parse_options(&mut self, input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<()> {
        let mut options = OptionParser {
            input,
            given: &mut self.given,
            errors,
            options: EVENT_OPTIONS,
        };
        each_option(input, |lookahead| {
            if lookahead.peek(event_kw::exchange) {
                options.parse::<event_kw::exchange, _, _>(
                    &mut self.exchange,
                    "\"orders\"",
                    exchange_name,
                )?;
            } else if lookahead.peek(event_kw::kind) {
                options.parse::<event_kw::kind, _, _>(&mut self.kind, "\"topic\"", kind)?;
            } else if lookahead.peek(event_kw::routing_key) {
                options.parse::<event_kw::routing_key, _, _>(
                    &mut self.routing_key,
                    "\"order.placed\"",
                    |lit: &LitStr| Ok(lit.clone()),
                )?;
            } else if lookahead.peek(event_kw::name) {
                options.parse::<event_kw::name, _, _>(
                    &mut self.name,
                    "\"order.placed\"",
                    wire_name,
                )?;
            } else if input.peek(Ident::peek_any) {
                options.skip_unknown()?;
            } else {
                return Err(lookahead.error());
            }
            Ok(())
        })
    }

    /// The checked options: exchange, kind, routing key and wire name, with
    /// an error for each one missing or wrong (placeholders stand in).
    pub(crate) fn resolve(&self, errors: &mut Errors) -> (String, KindAttr, String, String) {
        let missing = |errors: &mut Errors, option: &'static str, message: &str| {
            if self.complete && !self.given.contains(&option) {
                errors.push(syn::Error::new(Span::call_site(), message));
            }
        };
        if self.exchange.is_none() {
            missing(
                errors,
                event_kw::exchange::NAME,
                "missing required option `exchange`: write #[event(exchange = \"orders\", routing_key = \"order.placed\")]",
            );
        }
        let kind = self.kind.unwrap_or(KindAttr::Topic);
        let routing_key = match &self.routing_key {
            Some(lit) => match routing_key(lit, kind) {
                Ok(key) => key,
                Err(error) => {
                    errors.push(error);
                    String::new()
                }
            },
            None => {
                if kind != KindAttr::Fanout {
                    missing(
                        errors,
                        event_kw::routing_key::NAME,
                        "missing required option `routing_key`: write #[event(exchange = \"orders\", routing_key = \"order.placed\")] (only a fanout event may go without one)",
                    );
                }
                String::new()
            }
        };
        let name = match (&self.name, &self.routing_key) {
            (Some(name), _) => name.clone(),
            (None, Some(_)) if !routing_key.is_empty() => routing_key.clone(),
            (None, _) => {
                if self.routing_key.is_none() && kind == KindAttr::Fanout {
                    missing(
                        errors,
                        event_kw::name::NAME,
                        "a fanout event without a `routing_key` needs a `name`, its wire `type`: write name = \"order.placed\"",
                    );
                }
                String::new()
            }
        };
        (
            self.exchange.clone().unwrap_or_default(),
            kind,
            routing_key,
            name,
        )
    }
}

/// An exchange name RabbitMQ accepts and eda-worker may declare.
fn exchange_name(lit: &LitStr) -> syn::Result<String> {
    let exchange = lit.value();
    // No `:`, which separates the exchange from the key in `bind`.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let message = if exchange.is_empty() {
        "exchange name must not be empty (the default exchange is for jobs: use #[job] for point-to-point messages)".to_owned()
    } else if exchange.len() > 255 {
        format!(
            "exchange name is {} bytes long; AMQP allows at most 255",
            exchange.len()
        )
    } else if exchange.starts_with("amq.") {
        "exchange names starting with `amq.` are reserved by RabbitMQ, which does not let a client declare them".to_owned()
    } else if let Some(bad) = exchange.chars().find(|&c| !allowed(c)) {
        format!("invalid character {bad:?} in exchange name; use letters, digits, `.`, `_` and `-`")
    } else {
        return Ok(exchange);
    };
    Err(syn::Error::new(lit.span(), message))
}

/// `"topic"`, `"fanout"` or `"direct"`.
fn kind(lit: &LitStr) -> syn::Result<KindAttr> {
    match lit.value().as_str() {
        "topic" => Ok(KindAttr::Topic),
        "fanout" => Ok(KindAttr::Fanout),
        "direct" => Ok(KindAttr::Direct),
        other => Err(syn::Error::new(
            lit.span(),
            format!(
                "unknown exchange kind {other:?}: `kind` is \"topic\", \"fanout\" or \"direct\""
            ),
        )),
    }
}

/// The key an event is published with: an AMQP short string; for a topic
/// exchange, words separated by dots without the wildcards `*` and `#`,
/// which only bindings use.
fn routing_key(lit: &LitStr, kind: KindAttr) -> syn::Result<String> {
    let key = lit.value();
    let message = if key.len() > 255 {
        format!(
            "routing key is {} bytes long; AMQP allows at most 255",
            key.len()
        )
    } else if key.is_empty() && kind != KindAttr::Fanout {
        "routing key must not be empty".to_owned()
    } else if kind == KindAttr::Topic && key.contains(['*', '#']) {
        format!(
            "routing key {key:?} holds a wildcard: `*` and `#` are for the bindings of subscribers; an event is published with a plain key such as \"order.placed\""
        )
    } else if kind == KindAttr::Topic && key.split('.').any(str::is_empty) {
        format!(
            "routing key {key:?} has an empty word: a topic key is words separated by single dots, e.g. \"order.placed\""
        )
    } else {
        return Ok(key);
    };
    Err(syn::Error::new(lit.span(), message))
}
