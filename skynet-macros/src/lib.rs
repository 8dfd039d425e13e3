//! Procedural macros for skynet. Use them through the `skynet` crate.
use proc_macro::TokenStream;

/// See `skynet::service`.
#[proc_macro_attribute]
pub fn service(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}
