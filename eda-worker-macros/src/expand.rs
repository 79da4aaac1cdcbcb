//! Generating the job handle: a unit struct named after the function, one
//! `Job` impl that holds the body, and one registration item.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, PatType, ReturnType, Signature};

use crate::attr::JobAttr;

pub(crate) fn job(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let attr: JobAttr = syn::parse2(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let queue = attr.require_queue();
    let params = check_signature(&function.sig);
    let (queue, (ctx, args)) = match (queue, params) {
        (Ok(queue), Ok(params)) => (queue, params),
        (Err(mut first), Err(second)) => {
            first.combine(second);
            return Err(first);
        }
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };

    let ItemFn { attrs, vis, sig, block, .. } = &function;
    let ident = &sig.ident;
    let function_name = ident.unraw().to_string();
    let wire_name = attr.name.clone().unwrap_or_else(|| function_name.clone());
    let (docs, other_attrs): (Vec<_>, Vec<_>) = attrs.iter().partition(|a| a.path().is_ident("doc"));
    let output = match &sig.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => unreachable!("check_signature refuses a missing return type"),
    };
    let args_ty = &args.ty;
    let args_type = quote_spanned! {args_ty.span()=> type Args = #args_ty; };
    let retries = attr.retries.map(|retries| quote! { const RETRIES: u32 = #retries; });
    let timeout = attr.timeout.map(|timeout| {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        quote! {
            const TIMEOUT: ::eda_worker::__private::Duration =
                ::eda_worker::__private::Duration::from_millis(#millis);
        }
    });
    let (ctx_pat, ctx_ty) = (&ctx.pat, &ctx.ty);
    let args_pat = &args.pat;

    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl ::eda_worker::__private::Job for #ident {
            #args_type
            const NAME: &'static str = #wire_name;
            const QUEUE: &'static str = #queue;
            #retries
            #timeout

            #(#other_attrs)*
            async fn call(&self, #ctx_pat: #ctx_ty, #args_pat: #args_ty) -> #output #block
        }

        ::eda_worker::__private::inventory::submit! {
            ::eda_worker::__private::JobDefinition::of::<#ident>(
                ::core::concat!(::core::module_path!(), "::", #function_name)
            )
        }
    })
}

/// Checks that the function is `async fn name(ctx: JobContext, args: T) -> R`,
/// reporting every problem at once, and returns its two parameters.
fn check_signature(sig: &Signature) -> syn::Result<(&PatType, &PatType)> {
    let mut errors: Vec<syn::Error> = Vec::new();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!("job functions must be async: write `async fn {}`", sig.ident),
        ));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(constness.span, "job functions cannot be const"));
    }
    if !matches!(sig.safety, syn::Safety::Default) {
        errors.push(syn::Error::new(sig.ident.span(), "job functions cannot be unsafe"));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new(abi.span(), "job functions cannot have an explicit ABI"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "job functions cannot be generic: the worker decodes one concrete argument type",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new(variadic.span(), "job functions cannot be variadic"));
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new(
            sig.paren_token.span.close(),
            "job functions must return `Result<(), JobError>`",
        ));
    }
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new(
                receiver.self_token.span,
                "job functions cannot take `self`: a job is a free `async fn(ctx: JobContext, args: T)`",
            )),
            FnArg::Typed(param) => typed.push(param),
        }
    }
    let params = match typed.as_slice() {
        [ctx, args] => Some((*ctx, *args)),
        _ if sig.receiver().is_some() => None,
        _ => {
            errors.push(syn::Error::new(
                params_span(sig),
                format!(
                    "job functions take exactly two parameters, `(ctx: JobContext, args: YourArgs)`; found {}",
                    typed.len()
                ),
            ));
            None
        }
    };
    let mut errors = errors.into_iter();
    match (errors.next(), params) {
        (None, Some(params)) => Ok(params),
        (Some(mut first), _) => {
            first.extend(errors);
            Err(first)
        }
        (None, None) => Err(syn::Error::new(Span::call_site(), "invalid job function signature")),
    }
}

fn params_span(sig: &Signature) -> Span {
    if sig.inputs.is_empty() {
        sig.paren_token.span.join()
    } else {
        sig.inputs.span()
    }
}
