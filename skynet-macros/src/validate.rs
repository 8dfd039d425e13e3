//! Step 3: the rules a service must follow. Every broken rule is reported, together with the
//! errors of the earlier steps, so one build shows all that needs fixing.

use std::collections::HashSet;

use quote::quote;
use syn::ext::IdentExt as _;
use syn::{FnArg, ItemImpl, LitStr, Receiver, ReturnType, Signature, Type};

use crate::model::{Kind, Service, is_context, result_types, split_args};

/// Same limit as the wire format's (`MAX_NAME_LEN` in skynet's `wire` module): a name that does not fit
/// would only fail when the node starts.
const MAX_NAME_LEN: usize = 255;

/// What the generated code adds to the service type and its client; a method of the same name
/// would collide with it.
const GENERATED: [&str; 5] = [
    "client",
    "at",
    "with_deadline",
    "with_encoding",
    "service_client",
];

/// Returns the service if it breaks no rule and no earlier step found an error.
pub(crate) fn validate(mut service: Service) -> syn::Result<Service> {
    let mut errors = std::mem::take(&mut service.errors);
    check_version(&service.version, &mut errors);
    check_name(&service.name, &mut errors);
    if let (Kind::Impl(_), Some(option)) = (&service.kind, &service.idempotent_option) {
        errors.push(syn::Error::new_spanned(
            option,
            "the `idempotent` option is for functions; in an impl block, mark each idempotent \
             method with `#[idempotent]`",
        ));
    }
    match &service.kind {
        Kind::Fn(_) => {
            for sig in &service.functions {
                check_signature(sig, Role::Function, &mut errors);
            }
        }
        Kind::Impl(item) => check_impl(&service, item, &mut errors),
    }
    for marker in &service.stray_markers {
        errors.push(syn::Error::new_spanned(
            marker,
            "`#[idempotent]` marks service methods, which are `async fn`s taking `&self`",
        ));
    }
    match errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    }) {
        Some(all) => Err(all),
        None => Ok(service),
    }
}

fn check_impl(service: &Service, item: &ItemImpl, errors: &mut Vec<syn::Error>) {
    if !item.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item.generics,
            "a service impl block cannot be generic: the node must know the concrete type it \
             serves",
        ));
    }
    if let Some((_, path, _)) = &item.trait_ {
        // A trait fixes its methods' signatures, so the rules below could only be broken by
        // the trait, not fixed by the user.
        errors.push(syn::Error::new_spanned(
            path,
            "#[skynet::service] goes on an inherent impl block (`impl Widgets`), not on a trait \
             impl",
        ));
        return;
    }
    if service.functions.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item.self_ty,
            "this impl block has no service methods; a service method is an `async fn` taking \
             `&self`",
        ));
    }
    let mut seen = HashSet::new();
    for sig in &service.functions {
        check_signature(sig, Role::Method, errors);
        let name = sig.ident.unraw().to_string();
        if GENERATED.contains(&name.as_str()) {
            let owner = if name == "client" {
                type_name(&item.self_ty)
            } else {
                service.client.to_string()
            };
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                format!(
                    "a service method cannot be named `{name}`: #[skynet::service] generates \
                     `{owner}::{name}`"
                ),
            ));
        }
        if !seen.insert(name.clone()) {
            errors.push(syn::Error::new_spanned(
                &sig.ident,
                format!("service method `{name}` is defined more than once"),
            ));
        }
    }
}

/// What a signature is for; the rules differ only in the receiver.
#[derive(Clone, Copy)]
enum Role {
    Function,
    Method,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::Function => "function",
            Role::Method => "method",
        }
    }
}

/// The rules that make a function one handler with concrete wire types. They are checked in
/// source order so the errors read top to bottom.
fn check_signature(sig: &Signature, role: Role, errors: &mut Vec<syn::Error>) {
    let what = role.noun();
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            format!("a service {what} cannot be `unsafe`"),
        ));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            format!("a service {what} must be `async fn`"),
        ));
    }
    let len = sig.ident.unraw().to_string().len();
    if len > MAX_NAME_LEN {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            format!("method names are at most {MAX_NAME_LEN} bytes; this one has {len}"),
        ));
    }
    let generic = format!(
        "a service {what} cannot be generic: the node needs one concrete request, response and \
         error type"
    );
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&sig.generics, &generic));
    }
    match (role, sig.receiver()) {
        (Role::Function, Some(receiver)) => errors.push(syn::Error::new_spanned(
            receiver,
            "a service function cannot take `self`; to serve methods, put `#[skynet::service]` \
             on their impl block",
        )),
        (Role::Method, Some(receiver)) => check_receiver(receiver, errors),
        (_, None) => {}
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(typed) = arg
            && let Type::ImplTrait(_) = &*typed.ty
        {
            errors.push(syn::Error::new_spanned(&typed.ty, &generic));
        }
    }
    check_requests(sig, what, errors);
    if result_types(&sig.output).is_none() {
        let message = format!(
            "a service {what} must return `Result<Response, Error>` with both types written \
             out: the error type crosses the wire too"
        );
        errors.push(match &sig.output {
            ReturnType::Type(_, ty) => syn::Error::new_spanned(ty, message),
            ReturnType::Default => syn::Error::new(sig.paren_token.span.close(), message),
        });
    }
    if let Some(clause) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(clause, &generic));
    }
}

/// Exactly one request, after the optional `Context`.
fn check_requests(sig: &Signature, what: &str, errors: &mut Vec<syn::Error>) {
    let (context, requests) = split_args(sig);
    match requests.as_slice() {
        [_] => {}
        [] => {
            let after = if context.is_some() {
                " after the `Context`"
            } else {
                ""
            };
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                format!("expected a request argument{after}, e.g. `req: MyRequest`"),
            ));
        }
        [_, extra @ ..] => {
            let message = if extra.iter().any(|arg| is_context(&arg.ty)) {
                "the `Context` argument must come first, before the request".to_owned()
            } else {
                format!(
                    "a service {what} takes exactly one request argument; put these values in \
                     the request type"
                )
            };
            errors.push(syn::Error::new_spanned(quote!(#(#extra),*), message));
        }
    }
}

fn check_receiver(receiver: &Receiver, errors: &mut Vec<syn::Error>) {
    let message = match (&receiver.reference, &receiver.mutability) {
        (Some(_), None) if receiver.colon_token.is_none() => return,
        (Some(_), Some(_)) => {
            "a service method takes `&self`, not `&mut self`: calls run concurrently, so keep \
             mutable state behind a `Mutex` or in atomics"
        }
        (None, _) if receiver.colon_token.is_none() => {
            "a service method takes `&self`, not `self`: one value serves every call, so no \
             call can take it"
        }
        _ => "a service method takes `&self`",
    };
    errors.push(syn::Error::new_spanned(receiver, message));
}

fn check_version(version: &LitStr, errors: &mut Vec<syn::Error>) {
    if let Err(e) = semver::Version::parse(&version.value()) {
        errors.push(syn::Error::new_spanned(
            version,
            format!(
                "version {:?} is not semver `MAJOR.MINOR.PATCH` (with optional `-pre` and \
                 `+build`): {e}",
                version.value()
            ),
        ));
    }
}

fn check_name(name: &LitStr, errors: &mut Vec<syn::Error>) {
    let len = name.value().len();
    if !(1..=MAX_NAME_LEN).contains(&len) {
        errors.push(syn::Error::new_spanned(
            name,
            format!("service names are 1 to {MAX_NAME_LEN} bytes; this one has {len}"),
        ));
    }
}

fn type_name(ty: &Type) -> String {
    quote!(#ty).to_string().replace(' ', "")
}
