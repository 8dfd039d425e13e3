//! Step 1: the attribute's options and the annotated item, as written.
//!
//! Only an item that cannot be a service stops here. A bad option is recorded and parsing goes
//! on, so the same build also shows what is wrong with the item.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::ToTokens as _;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream, Parser as _};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Ident, ImplItem, Item, ItemFn, ItemImpl, Lit, LitStr, Meta};
use syn::{Path, Token, Type, TypePath};

/// The marker attribute users put on methods. It is not a real attribute, so it must never
/// reach the compiler: every path out of this crate strips it.
const MARKER: &str = "idempotent";

/// What the attribute and the item say, before any rule is applied.
pub(crate) struct Parsed {
    pub(crate) options: Options,
    pub(crate) item: ServiceItem,
    /// Problems that did not stop parsing; reported together with validation's.
    pub(crate) errors: Vec<syn::Error>,
}

/// The options that were well-formed. Each keeps its token for error spans.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitStr>,
    pub(crate) idempotent: Option<Ident>,
    pub(crate) krate: Option<Path>,
}

/// The item with every `#[idempotent]` removed; where each one was is kept alongside.
pub(crate) enum ServiceItem {
    Fn {
        item: ItemFn,
        marker: Option<Attribute>,
    },
    Impl {
        item: ItemImpl,
        /// The last segment of the implementing type's path: it names the client and service.
        type_ident: Ident,
        /// On the impl block itself, where it means nothing.
        impl_marker: Option<Attribute>,
        /// One entry per `item.items`, in order.
        markers: Vec<Option<Attribute>>,
    },
}

/// Reads the options and the item. Fails only if the item is neither a function nor an impl
/// block of a named type.
pub(crate) fn parse(args: TokenStream, item: TokenStream) -> syn::Result<Parsed> {
    let mut errors = Vec::new();
    let options = match Punctuated::<RawOption, Token![,]>::parse_terminated.parse2(args) {
        Ok(raw) => Options::from_raw(raw, &mut errors),
        Err(e) => {
            errors.push(e);
            Options::default()
        }
    };
    let item = match syn::parse2::<Item>(item) {
        Ok(item) => item,
        Err(e) => return Err(fatal(e, errors)),
    };
    let item = match item {
        Item::Fn(mut item) => {
            let marker = take_marker(&mut item.attrs, &mut errors);
            ServiceItem::Fn { item, marker }
        }
        Item::Impl(mut item) => {
            let Some(type_ident) = type_ident(&item.self_ty) else {
                return Err(fatal(
                    syn::Error::new_spanned(&item.self_ty, "expected a named type, like `Widgets`"),
                    errors,
                ));
            };
            let impl_marker = take_marker(&mut item.attrs, &mut errors);
            let markers = item
                .items
                .iter_mut()
                .map(|inner| match item_attrs(inner) {
                    Some(attrs) => take_marker(attrs, &mut errors),
                    None => None,
                })
                .collect();
            ServiceItem::Impl {
                item,
                type_ident,
                impl_marker,
                markers,
            }
        }
        other => {
            return Err(fatal(
                syn::Error::new_spanned(
                    other,
                    "#[skynet::service] goes on an `async fn` or on an `impl` block of async \
                     methods",
                ),
                errors,
            ));
        }
    };
    Ok(Parsed {
        options,
        item,
        errors,
    })
}

/// The item without our marker attributes, for output next to errors: the user's code stays
/// visible to the compiler and IDEs even when the service cannot be generated.
pub(crate) fn strip_markers(item: TokenStream) -> TokenStream {
    let mut ignored = Vec::new();
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(mut f)) => {
            take_marker(&mut f.attrs, &mut ignored);
            f.into_token_stream()
        }
        Ok(Item::Impl(mut i)) => {
            take_marker(&mut i.attrs, &mut ignored);
            for inner in &mut i.items {
                if let Some(attrs) = item_attrs(inner) {
                    take_marker(attrs, &mut ignored);
                }
            }
            i.into_token_stream()
        }
        _ => item,
    }
}

/// The error that stops parsing, with the option errors found before it.
fn fatal(error: syn::Error, earlier: Vec<syn::Error>) -> syn::Error {
    let earlier = earlier.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    });
    match earlier {
        Some(mut all) => {
            all.combine(error);
            all
        }
        None => error,
    }
}

fn type_ident(ty: &Type) -> Option<Ident> {
    match ty {
        Type::Path(TypePath { qself: None, path }) => {
            path.segments.last().map(|segment| segment.ident.clone())
        }
        _ => None,
    }
}

fn item_attrs(item: &mut ImplItem) -> Option<&mut Vec<Attribute>> {
    match item {
        ImplItem::Fn(f) => Some(&mut f.attrs),
        ImplItem::Const(c) => Some(&mut c.attrs),
        ImplItem::Type(t) => Some(&mut t.attrs),
        ImplItem::Macro(m) => Some(&mut m.attrs),
        _ => None,
    }
}

/// Removes every `#[idempotent]` and returns the first.
fn take_marker(attrs: &mut Vec<Attribute>, errors: &mut Vec<syn::Error>) -> Option<Attribute> {
    let mut found = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident(MARKER) {
            return true;
        }
        if !matches!(attr.meta, Meta::Path(_)) {
            errors.push(syn::Error::new_spanned(
                &attr.meta,
                "`#[idempotent]` takes no arguments",
            ));
        }
        found.get_or_insert_with(|| attr.clone());
        false
    });
    found
}

/// `key` or `key = value`. Keys are read with `parse_any` because `crate` is a keyword.
struct RawOption {
    key: Ident,
    value: Option<Expr>,
}

impl Parse for RawOption {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Self { key, value })
    }
}

impl Options {
    fn from_raw(raw: Punctuated<RawOption, Token![,]>, errors: &mut Vec<syn::Error>) -> Self {
        let mut options = Self::default();
        let mut seen = HashSet::new();
        for RawOption { key, value } in raw {
            let name = key.to_string();
            if !seen.insert(name.clone()) {
                errors.push(syn::Error::new_spanned(
                    &key,
                    format!("option `{name}` is given more than once"),
                ));
                continue;
            }
            match name.as_str() {
                "name" => options.name = string_value(&key, value, errors),
                "version" => options.version = string_value(&key, value, errors),
                "crate" => {
                    options.krate =
                        string_value(&key, value, errors).and_then(|lit| crate_path(&lit, errors));
                }
                "idempotent" => {
                    if let Some(value) = value {
                        errors.push(syn::Error::new_spanned(
                            value,
                            "`idempotent` takes no value; write just `idempotent`",
                        ));
                    }
                    options.idempotent = Some(key);
                }
                _ => errors.push(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown option `{name}`; expected `name`, `version`, `idempotent` or \
                         `crate`"
                    ),
                )),
            }
        }
        options
    }
}

fn string_value(key: &Ident, value: Option<Expr>, errors: &mut Vec<syn::Error>) -> Option<LitStr> {
    match value {
        Some(Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        })) => Some(lit),
        Some(other) => {
            errors.push(syn::Error::new_spanned(
                other,
                format!("`{key}` takes a string literal: `{key} = \"...\"`"),
            ));
            None
        }
        None => {
            errors.push(syn::Error::new_spanned(
                key,
                format!("`{key}` needs a value: `{key} = \"...\"`"),
            ));
            None
        }
    }
}

fn crate_path(lit: &LitStr, errors: &mut Vec<syn::Error>) -> Option<Path> {
    match lit.parse::<Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            errors.push(syn::Error::new_spanned(
                lit,
                "`crate` takes the path of the skynet crate, such as \"::skynet\"",
            ));
            None
        }
    }
}
