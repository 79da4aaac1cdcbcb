//! Generating the job handle: a unit struct named after the function, one
//! `Job` impl that holds the body, and one registration item.

use std::time::Duration;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Item, ItemFn, PatType, ReturnType, Signature, Type};

use crate::attr::{Errors, JobAttr, QueueTypeAttr};

pub(crate) fn job(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let attr = JobAttr::parse(attr, &mut errors);
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => return Err(errors.and(not_a_function(item, error))),
    };
    let queue = attr.queue(&mut errors);
    attr.check_subscription(&mut errors);
    let params = match check_signature(&function.sig) {
        Ok(params) => params,
        Err(error) => return Err(errors.and(error)),
    };
    let handle = generate(&attr, queue, &function, &params);
    // With only the options wrong, the handle is still generated (with
    // placeholders), so code that uses the job reports nothing more.
    Ok(match errors.take() {
        Some(error) => {
            let mut tokens = error.into_compile_error();
            tokens.extend(handle);
            tokens
        }
        None => handle,
    })
}

/// The error for an item `ItemFn` does not parse: a clearer one when it is
/// not a function at all.
fn not_a_function(item: TokenStream, error: syn::Error) -> syn::Error {
    match syn::parse2::<Item>(item) {
        Ok(Item::Fn(_)) | Err(_) => error,
        Ok(_) => syn::Error::new(error.span(), "`#[job]` can only be used on an `async fn`"),
    }
}

/// The two parameters and the return type of a valid job function.
struct Params<'a> {
    ctx: &'a PatType,
    args: &'a PatType,
    output: &'a Type,
}

fn generate(attr: &JobAttr, queue: &str, function: &ItemFn, params: &Params<'_>) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = function;
    let Params { ctx, args, output } = params;
    let ident = &sig.ident;
    let function_name = ident.unraw().to_string();
    let wire_name = attr.name.clone().unwrap_or_else(|| function_name.clone());
    let args_ty = &args.ty;
    // A subscriber of an event runs the messages of the event's wire name,
    // and takes the event itself.
    let (name, subscription, takes_the_event) = match &attr.on {
        Some(event) => {
            let event_trait = quote_spanned! {event.span()=> ::eda_worker::__private::Event };
            (
                quote_spanned! {event.span()=> <#event as #event_trait>::NAME },
                Some(quote_spanned! {event.span()=>
                    const SUBSCRIPTION: ::eda_worker::__private::Subscription =
                        ::eda_worker::__private::Subscription::Event(
                            ::eda_worker::__private::Binding::of_event::<#event>(),
                        );
                }),
                // The job's argument is the event of `on`.
                Some(quote_spanned! {args_ty.span()=>
                    const _: fn(#event) -> #args_ty = |event| event;
                }),
            )
        }
        None => {
            let subscription = (!attr.bind.is_empty()).then(|| {
                let bindings = attr.bind.iter().map(|(exchange, key)| {
                    quote! { ::eda_worker::__private::Binding::raw(#exchange, #key) }
                });
                quote! {
                    const SUBSCRIPTION: ::eda_worker::__private::Subscription =
                        ::eda_worker::__private::Subscription::Raw(&[#(#bindings),*]);
                }
            });
            (quote! { #wire_name }, subscription, None)
        }
    };
    let (docs, other_attrs): (Vec<_>, Vec<_>) =
        attrs.iter().partition(|a| a.path().is_ident("doc"));
    let args_type = quote_spanned! {args_ty.span()=> type Args = #args_ty; };
    let reply_ty = reply_type(output);
    let output_type = quote_spanned! {output.span()=> type Output = #reply_ty; };
    let retries = attr
        .retries
        .map(|retries| quote! { const RETRIES: u32 = #retries; });
    let duration = |value: Duration| {
        let (secs, nanos) = (value.as_secs(), value.subsec_nanos());
        quote! { ::eda_worker::__private::Duration::new(#secs, #nanos) }
    };
    let backoff = attr.backoff.map(|(min, max)| {
        let (min, max) = (duration(min), duration(max));
        quote! {
            const BACKOFF: ::eda_worker::__private::Backoff =
                ::eda_worker::__private::Backoff::new(#min, #max);
        }
    });
    let queue_type = attr.queue_type.map(|queue_type| {
        let variant = match queue_type {
            QueueTypeAttr::Classic => quote! { Classic },
            QueueTypeAttr::Quorum => quote! { Quorum },
        };
        quote! {
            const QUEUE_TYPE: ::eda_worker::__private::QueueType =
                ::eda_worker::__private::QueueType::#variant;
        }
    });
    let timeout = attr.timeout.map(|timeout| {
        let timeout = duration(timeout);
        quote! { const TIMEOUT: ::eda_worker::__private::Duration = #timeout; }
    });
    let dedup = attr.dedup.map(|dedup| {
        quote! {
            const DEDUP: ::core::option::Option<bool> = ::core::option::Option::Some(#dedup);
        }
    });
    let (ctx_pat, ctx_ty) = (&ctx.pat, &ctx.ty);
    let args_pat = &args.pat;

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl ::eda_worker::__private::Job for #ident {
            #args_type
            #output_type
            const NAME: &'static str = #name;
            const QUEUE: &'static str = #queue;
            #retries
            #timeout
            #backoff
            #queue_type
            #dedup
            #subscription

            #(#other_attrs)*
            async fn call(&self, #ctx_pat: #ctx_ty, #args_pat: #args_ty) -> #output #block
        }

        #takes_the_event

        ::eda_worker::__private::inventory::submit! {
            ::eda_worker::__private::JobDefinition::of::<#ident>(
                ::core::concat!(::core::module_path!(), "::", #function_name)
            )
        }
    }
}

/// The `T` of a return type `Result<T, JobError>` (or of an alias
/// `Result<T>`): what the job replies with. `()` when the type is written
/// otherwise; the compiler then checks that the handler returns
/// `Result<(), JobError>`.
fn reply_type(output: &Type) -> TokenStream {
    if let Type::Path(path) = output
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(arguments) = &last.arguments
        && let Some(syn::GenericArgument::Type(reply)) = arguments.args.first()
    {
        return quote! { #reply };
    }
    quote! { () }
}

/// Checks that the function is `async fn name(ctx: JobContext, args: T) -> R`,
/// reporting every problem at once, and returns its parameters and return type.
fn check_signature(sig: &Signature) -> syn::Result<Params<'_>> {
    let mut errors = Errors::default();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "job functions must be async: write `async fn {}`",
                sig.ident
            ),
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "job functions cannot be const",
        ));
    }
    match &sig.safety {
        syn::Safety::Unsafe(unsafety) => errors.push(syn::Error::new(
            unsafety.span,
            "job functions cannot be unsafe",
        )),
        syn::Safety::Safe(safety) => errors.push(syn::Error::new(
            safety.span,
            "job functions cannot be marked `safe`",
        )),
        syn::Safety::Default => {}
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "job functions cannot have an explicit ABI",
        ));
    }
    let generic = "job functions cannot be generic: the worker decodes one concrete argument type";
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&sig.generics, generic));
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(where_clause, generic));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "job functions cannot be variadic",
        ));
    }
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "job functions cannot take `self`: a job is a free `async fn(ctx: JobContext, args: T)`",
            )),
            FnArg::Typed(param) => typed.push(param),
        }
    }
    let count = |found: usize| {
        format!(
            "job functions take exactly two parameters, `(ctx: JobContext, args: YourArgs)`; found {found}"
        )
    };
    let params = match typed.as_slice() {
        [ctx, args] => Some((*ctx, *args)),
        // Already reported: the parameters besides `self` may well be right.
        _ if sig.receiver().is_some() => None,
        [] => {
            errors.push(syn::Error::new(sig.paren_token.span.join(), count(0)));
            None
        }
        [_] => {
            errors.push(syn::Error::new_spanned(&sig.inputs, count(1)));
            None
        }
        [_, _, extra @ ..] => {
            errors.push(syn::Error::new_spanned(
                quote!(#(#extra),*),
                count(typed.len()),
            ));
            None
        }
    };
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            errors.push(syn::Error::new(
                sig.paren_token.span.close(),
                "job functions must return `Result<(), JobError>`: add `-> Result<(), JobError>`",
            ));
            None
        }
    };
    match (errors.take(), params, output) {
        (None, Some((ctx, args)), Some(output)) => Ok(Params { ctx, args, output }),
        (Some(error), _, _) => Err(error),
        // Every `None` above comes with an error.
        (None, _, _) => Err(syn::Error::new_spanned(
            sig,
            "invalid job function signature",
        )),
    }
}
