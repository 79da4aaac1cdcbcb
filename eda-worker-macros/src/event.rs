//! Generating `#[derive(Event)]`: the `Event` impl from `#[event(...)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::DeriveInput;

use crate::attr::{Errors, EventAttr, KindAttr};

pub(crate) fn derive(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let mut errors = Errors::default();
    if !input.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &input.generics,
            "events cannot be generic: a subscriber decodes one concrete type",
        ));
    }
    let mut attrs = input
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("event"));
    let attr = match attrs.next() {
        Some(first) => {
            if let Some(second) = attrs.next() {
                errors.push(syn::Error::new_spanned(
                    second,
                    "duplicate #[event(...)]: write all the options in one",
                ));
            }
            match first.meta.require_list() {
                Ok(list) => EventAttr::parse(list.tokens.clone(), &mut errors),
                Err(error) => {
                    errors.push(error);
                    EventAttr::default()
                }
            }
        }
        None => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing #[event(...)]: write #[event(exchange = \"orders\", routing_key = \"order.placed\")]",
            ));
            EventAttr::default()
        }
    };
    let (exchange, kind, routing_key, name) = attr.resolve(&mut errors);
    let kind = match kind {
        KindAttr::Topic => quote! { Topic },
        KindAttr::Fanout => quote! { Fanout },
        KindAttr::Direct => quote! { Direct },
    };
    let ident = &input.ident;
    let implementation = quote! {
        impl ::eda_worker::__private::Event for #ident {
            const EXCHANGE: &'static str = #exchange;
            const KIND: ::eda_worker::__private::ExchangeKind =
                ::eda_worker::__private::ExchangeKind::#kind;
            const ROUTING_KEY: &'static str = #routing_key;
            const NAME: &'static str = #name;
        }
    };
    Ok(match errors.take() {
        Some(error) => error.into_compile_error(),
        None => implementation,
    })
}
