//! Step 2: the service as typed data: its names, its methods and their wire types.
//!
//! Lowering only takes the item apart and never fails: a function whose arguments or return
//! type do not have the one shape a method can have is left out of `methods`, and `validate`,
//! which sees every function, reports why.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens as _, format_ident};
use syn::ext::IdentExt as _;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItem, ItemFn, ItemImpl, LitStr, Pat, PatType,
    Path, PathArguments, ReturnType, Signature, Type, TypePath,
};

use crate::parse::{Options, Parsed, ServiceItem};

/// The version a service gets when the attribute names none.
const DEFAULT_VERSION: &str = "0.1.0";

pub(crate) struct Service {
    /// Where the skynet crate is; every generated path starts here.
    pub(crate) krate: Path,
    /// The service name. Spanned at the `name` option, or at the identifier it comes from.
    pub(crate) name: LitStr,
    pub(crate) version: LitStr,
    /// The `idempotent` option as written, which only functions accept.
    pub(crate) idempotent_option: Option<Ident>,
    pub(crate) kind: Kind,
    /// The generated client type.
    pub(crate) client: Ident,
    /// Every function that is meant as a service method, well-formed or not, for the rules
    /// about signatures.
    pub(crate) functions: Vec<Signature>,
    /// The well-formed methods, in source order.
    pub(crate) methods: Vec<Method>,
    /// `#[idempotent]` on something that is not a service method.
    pub(crate) stray_markers: Vec<Attribute>,
    /// Errors from parsing, reported together with validation's.
    pub(crate) errors: Vec<syn::Error>,
}

pub(crate) enum Kind {
    Fn(ItemFn),
    Impl(ItemImpl),
}

pub(crate) struct Method {
    /// The Rust function, called by the handler and naming the client method.
    pub(crate) ident: Ident,
    /// The method name on the wire: the identifier without `r#`.
    pub(crate) name: LitStr,
    /// Whether the function takes a `Context` before the request.
    pub(crate) context: bool,
    /// The client's parameter: the user's name when it is a plain identifier.
    pub(crate) request_ident: Ident,
    pub(crate) request: Type,
    pub(crate) response: Type,
    pub(crate) error: Type,
    pub(crate) idempotent: bool,
    pub(crate) docs: Vec<Attribute>,
}

impl Service {
    pub(crate) fn lower(parsed: Parsed) -> Self {
        let Parsed {
            options:
                Options {
                    name,
                    version,
                    idempotent,
                    krate,
                },
            item,
            errors,
        } = parsed;
        let krate = krate.unwrap_or_else(|| syn::parse_quote!(::skynet));
        let version = version.unwrap_or_else(|| LitStr::new(DEFAULT_VERSION, Span::call_site()));
        let mut functions = Vec::new();
        let mut methods = Vec::new();
        let mut stray_markers = Vec::new();
        let (name, client, kind) = match item {
            ServiceItem::Fn { item, marker } => {
                let ident = &item.sig.ident;
                let fn_name = ident.unraw().to_string();
                let client = format_ident!("{}Client", camel_case(&fn_name), span = ident.span());
                let name = name.unwrap_or_else(|| LitStr::new(&fn_name, ident.span()));
                let idempotent = idempotent.is_some() || marker.is_some();
                functions.push(item.sig.clone());
                methods.extend(lower_method(&item.attrs, &item.sig, None, idempotent));
                (name, client, Kind::Fn(item))
            }
            ServiceItem::Impl {
                item,
                type_ident,
                impl_marker,
                markers,
            } => {
                let type_name = type_ident.unraw().to_string();
                let client = format_ident!("{type_name}Client", span = type_ident.span());
                let name =
                    name.unwrap_or_else(|| LitStr::new(&snake_case(&type_name), type_ident.span()));
                stray_markers.extend(impl_marker);
                for (inner, marker) in item.items.iter().zip(markers) {
                    match inner {
                        ImplItem::Fn(f) if is_service_method(&f.sig) => {
                            functions.push(f.sig.clone());
                            methods.extend(lower_method(
                                &f.attrs,
                                &f.sig,
                                Some(&item.self_ty),
                                marker.is_some(),
                            ));
                        }
                        _ => stray_markers.extend(marker),
                    }
                }
                (name, client, Kind::Impl(item))
            }
        };
        Service {
            krate,
            name,
            version,
            idempotent_option: idempotent,
            kind,
            client,
            functions,
            methods,
            stray_markers,
            errors,
        }
    }
}

/// In an impl block, an async fn with any receiver is meant as a service method (a wrong
/// receiver is an error, not a reason to ignore it); anything else is the user's own helper.
fn is_service_method(sig: &Signature) -> bool {
    sig.asyncness.is_some() && sig.receiver().is_some()
}

/// Takes `[&self,] [ctx: Context,] request -> Result<Response, Error>` apart. `self_ty` is
/// set for methods, whose types may say `Self`. Any other shape gives `None`; `validate` says
/// what is wrong with it.
fn lower_method(
    attrs: &[Attribute],
    sig: &Signature,
    self_ty: Option<&Type>,
    idempotent: bool,
) -> Option<Method> {
    let (context, requests) = split_args(sig);
    let ([request], Some((response, error))) = (requests.as_slice(), result_types(&sig.output))
    else {
        return None;
    };
    let outside = |ty: &Type| match self_ty {
        Some(self_ty) => replace_self(ty, self_ty),
        None => ty.clone(),
    };
    Some(Method {
        ident: sig.ident.clone(),
        name: LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span()),
        context: context.is_some(),
        request_ident: parameter_name(&request.pat),
        request: outside(&request.ty),
        response: outside(response),
        error: outside(error),
        idempotent,
        docs: attrs
            .iter()
            .filter(|attr| attr.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

/// The typed arguments: the `Context`, if one comes first, and the rest, which should be
/// exactly one request.
pub(crate) fn split_args(sig: &Signature) -> (Option<&PatType>, Vec<&PatType>) {
    let mut args = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some(typed),
            FnArg::Receiver(_) => None,
        })
        .peekable();
    let context = args.next_if(|arg| is_context(&arg.ty));
    (context, args.collect())
}

/// The macro cannot resolve names, so a `Context` is recognised by how its type is spelled:
/// `Context`, `skynet::Context` or any other path ending in it.
pub(crate) fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(TypePath { qself: None, path }) => path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Context" && s.arguments.is_none()),
        _ => false,
    }
}

/// `Ok` and `Err` of a return type spelled `Result<Ok, Err>`. One-parameter aliases such as
/// `io::Result<T>` are refused: the error type must be visible to build the client.
pub(crate) fn result_types(output: &ReturnType) -> Option<(&Type, &Type)> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(TypePath { qself: None, path }) = &**ty else {
        return None;
    };
    let last = path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (
        last.ident == "Result",
        types.next(),
        types.next(),
        types.next(),
    ) {
        (true, Some(Some(ok)), Some(Some(err)), None) => Some((ok, err)),
        _ => None,
    }
}

/// A leading underscore says "unused", which the client's parameter is not.
fn parameter_name(pat: &Pat) -> Ident {
    match pat {
        Pat::Ident(p) if p.subpat.is_none() && !p.ident.to_string().starts_with('_') => {
            p.ident.clone()
        }
        _ => Ident::new("request", Span::call_site()),
    }
}

/// Generated code outside the impl block (the client, the type checks) cannot say `Self`.
fn replace_self(ty: &Type, self_ty: &Type) -> Type {
    fn replace(tokens: TokenStream, self_ty: &Type) -> TokenStream {
        tokens
            .into_iter()
            .map(|tree| match tree {
                TokenTree::Ident(ident) if ident == "Self" => self_ty.to_token_stream(),
                TokenTree::Group(group) => {
                    let mut new = proc_macro2::Group::new(
                        group.delimiter(),
                        replace(group.stream(), self_ty),
                    );
                    new.set_span(group.span());
                    TokenTree::Group(new).into()
                }
                other => other.into(),
            })
            .collect()
    }
    Type::Verbatim(replace(ty.to_token_stream(), self_ty))
}

/// `get_widgets` → `GetWidgets`, for the client of a function service.
fn camel_case(snake: &str) -> String {
    snake
        .split('_')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
        })
        .collect()
}

/// `WidgetStore` → `widget_store` and `HTTPServer` → `http_server`, for the default name of
/// an impl-block service.
fn snake_case(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|j| chars.get(j));
            let next = chars.get(i + 1);
            let after_word = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit());
            let acronym_end =
                prev.is_some_and(|p| p.is_uppercase()) && next.is_some_and(|n| n.is_lowercase());
            if (after_word || acronym_end) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_conversions() {
        assert_eq!(camel_case("get_widgets"), "GetWidgets");
        assert_eq!(camel_case("_private__fn"), "PrivateFn");
        assert_eq!(camel_case("v2_get"), "V2Get");
        assert_eq!(snake_case("Widgets"), "widgets");
        assert_eq!(snake_case("WidgetStore"), "widget_store");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("ApiV2"), "api_v2");
        assert_eq!(snake_case("Api2Go"), "api2_go");
    }

    #[test]
    fn self_is_replaced_everywhere() {
        let ty: Type = syn::parse_quote!(Vec<(Self, Option<Self>)>);
        let widgets: Type = syn::parse_quote!(Widgets);
        let replaced = replace_self(&ty, &widgets).to_token_stream().to_string();
        assert_eq!(replaced, "Vec < (Widgets , Option < Widgets >) >");
    }
}
