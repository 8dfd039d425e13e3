//! Procedural macros for skynet. Use them through the `skynet` crate, which documents them.
//!
//! The attribute runs in four steps, one module each: `parse` reads the tokens, `model`
//! lowers them to typed data, `validate` applies the rules and `expand` writes the code.
//! Errors from all steps are reported together, next to the user's item as written.

use proc_macro::TokenStream;

mod expand;
mod model;
mod parse;
mod validate;

/// See `skynet::service`.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let parsed = parse::parse(args.into(), item.clone());
    let service = parsed.and_then(|p| validate::validate(model::Service::lower(p)));
    let tokens = service.map_or_else(|e| expand::fallback(&e, item), |s| expand::expand(&s));
    tokens.into()
}
