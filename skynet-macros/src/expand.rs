//! Step 4: the generated code.
//!
//! It calls only the public API (`ServiceDef::builder`, `ServiceClient`), so it is what a person
//! would write by hand. Every path goes through `#krate::__private`, `core` and `std`
//! included: the code must work where the crate is renamed and under `#![no_implicit_prelude]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Attribute, Ident, ItemFn, ItemImpl, Signature, Visibility};

use crate::model::{Kind, Method, Service};
use crate::parse;

/// The code for a service that passed validation.
pub(crate) fn expand(service: &Service) -> TokenStream {
    let (service_code, vis, cfgs) = match &service.kind {
        Kind::Fn(item) => {
            let cfgs = cfgs(&item.attrs);
            (expand_fn(service, item, &cfgs), item.vis.clone(), cfgs)
        }
        Kind::Impl(item) => {
            let cfgs = cfgs(&item.attrs);
            (
                expand_impl(service, item, &cfgs),
                syn::parse_quote!(pub),
                cfgs,
            )
        }
    };
    let client = client(service, &vis, &cfgs);
    let checks = wire_checks(service, &cfgs);
    quote! {
        #service_code
        #client
        #checks
    }
}

/// The errors, and the user's item as written so that the rest of the crate still type-checks
/// against it and IDEs keep resolving it.
pub(crate) fn fallback(error: &syn::Error, item: TokenStream) -> TokenStream {
    let errors = error.to_compile_error();
    let item = parse::strip_markers(item);
    quote! {
        #errors
        #item
    }
}

/// The function becomes a unit struct of the same name, so `get_widgets` is both the value a
/// node hosts and the namespace of `get_widgets::client` and `get_widgets::run`.
fn expand_fn(service: &Service, item: &ItemFn, cfgs: &[&Attribute]) -> TokenStream {
    let p = private(service);
    let Service { name, version, .. } = service;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let ident = &sig.ident;
    let (docs, others): (Vec<&Attribute>, Vec<&Attribute>) =
        attrs.iter().partition(|attr| attr.path().is_ident("doc"));
    let run = Signature {
        ident: Ident::new("run", ident.span()),
        ..sig.clone()
    };
    let (ctx, req) = (local("ctx"), local("req"));
    let register = service.methods.iter().map(|method| {
        let Method {
            name,
            context,
            request,
            ..
        } = method;
        let add = add_method(method);
        let (ctx_param, ctx_arg) = if *context {
            (quote!(#ctx), quote!(#ctx,))
        } else {
            (quote!(_), quote!())
        };
        quote! {
            .#add(#name, |#ctx_param: #p::Context, #req: #request| #ident::run(#ctx_arg #req))
        }
    });
    let client_fn = client_fn(service);
    let struct_doc = if docs.is_empty() {
        let doc = format!(
            "The `{}` service. Host it with `NodeBuilder::service`.",
            name.value()
        );
        quote!(#[doc = #doc])
    } else {
        quote!(#(#docs)*)
    };
    quote! {
        #struct_doc
        #(#cfgs)*
        #[allow(non_camel_case_types)]
        #[derive(
            #p::core::clone::Clone,
            #p::core::marker::Copy,
            #p::core::fmt::Debug,
            #p::core::default::Default
        )]
        #vis struct #ident;

        #(#cfgs)*
        impl #ident {
            /// Runs the service's body directly, without a node.
            #(#others)*
            pub #run #block

            #client_fn
        }

        #(#cfgs)*
        impl #p::IntoService for #ident {
            fn into_service(
                self,
            ) -> #p::core::result::Result<#p::ServiceDef, #p::ServiceDefError> {
                #p::ServiceDef::builder(#name, #version)
                    #(#register)*
                    .build()
            }
        }
    }
}

/// The impl block stays as written. The value is shared by every call, so it goes behind an
/// `Arc`, and each handler holds a clone.
fn expand_impl(service: &Service, item: &ItemImpl, cfgs: &[&Attribute]) -> TokenStream {
    let p = private(service);
    let Service { name, version, .. } = service;
    let self_ty = &item.self_ty;
    let (this, ctx, req) = (local("this"), local("ctx"), local("req"));
    let register = service.methods.iter().map(|method| {
        let Method {
            ident,
            name,
            context,
            request,
            ..
        } = method;
        let add = add_method(method);
        let (ctx_param, ctx_arg) = if *context {
            (quote!(#ctx), quote!(#ctx,))
        } else {
            (quote!(_), quote!())
        };
        quote! {
            .#add(#name, {
                let #this = #p::core::clone::Clone::clone(&#this);
                move |#ctx_param: #p::Context, #req: #request| {
                    let #this = #p::core::clone::Clone::clone(&#this);
                    async move { #this.#ident(#ctx_arg #req).await }
                }
            })
        }
    });
    let client_fn = client_fn(service);
    quote! {
        #item

        #(#cfgs)*
        impl #self_ty {
            #client_fn
        }

        #(#cfgs)*
        impl #p::IntoService for #self_ty {
            fn into_service(
                self,
            ) -> #p::core::result::Result<#p::ServiceDef, #p::ServiceDefError> {
                let #this = #p::std::sync::Arc::new(self);
                #p::ServiceDef::builder(#name, #version)
                    #(#register)*
                    .build()
            }
        }
    }
}

/// `Service::client(&node)`, on the service type.
fn client_fn(service: &Service) -> TokenStream {
    let p = private(service);
    let Service { name, client, .. } = service;
    let doc = format!(
        "A client of the `{}` service. It calls this process's instance unless `.at(addr)` \
         names another node.",
        name.value()
    );
    quote! {
        #[doc = #doc]
        pub fn client(node: &#p::Node) -> #client {
            #client {
                inner: #p::ServiceClient::new(node, #name),
            }
        }
    }
}

/// The typed client: `ServiceClient`'s options, and one typed call per method.
fn client(service: &Service, vis: &Visibility, cfgs: &[&Attribute]) -> TokenStream {
    let p = private(service);
    let Service { name, client, .. } = service;
    let calls = service.methods.iter().map(|method| {
        let Method {
            ident,
            name: method_name,
            request_ident,
            request,
            response,
            error,
            docs,
            ..
        } = method;
        let (call, docs) = match &service.kind {
            Kind::Fn(_) => {
                let doc = format!("Calls the `{}` service.", name.value());
                (Ident::new("call", Span::call_site()), quote!(#[doc = #doc]))
            }
            Kind::Impl(_) if docs.is_empty() => {
                let doc = format!("Calls `{}.{}`.", name.value(), method_name.value());
                (ident.clone(), quote!(#[doc = #doc]))
            }
            Kind::Impl(_) => (ident.clone(), quote!(#(#docs)*)),
        };
        quote! {
            #docs
            pub async fn #call(
                &self,
                #request_ident: #request,
            ) -> #p::core::result::Result<#response, #p::CallError<#error>> {
                self.inner
                    .call::<#request, #response, #error>(#method_name, #request_ident)
                    .await
            }
        }
    });
    let doc = format!("Typed client of the `{}` service.", name.value());
    quote! {
        #[doc = #doc]
        #(#cfgs)*
        #[derive(#p::core::clone::Clone, #p::core::fmt::Debug)]
        #vis struct #client {
            inner: #p::ServiceClient,
        }

        #(#cfgs)*
        impl #client {
            /// Sends calls to the node at `addr` rather than to this process.
            pub fn at(self, addr: #p::std::net::SocketAddr) -> Self {
                Self { inner: self.inner.at(addr) }
            }

            /// Gives each call this deadline instead of the node's default.
            pub fn with_deadline(self, deadline: #p::core::time::Duration) -> Self {
                Self { inner: self.inner.with_deadline(deadline) }
            }

            /// Calls only instances whose version matches `requirement`.
            pub fn with_version(self, requirement: #p::VersionReq) -> Self {
                Self { inner: self.inner.with_version(requirement) }
            }

            /// Encodes remote calls with `encoding` (default bincode).
            pub fn with_encoding(self, encoding: #p::Encoding) -> Self {
                Self { inner: self.inner.with_encoding(encoding) }
            }

            /// The untyped client underneath, e.g. for `call_json`.
            pub fn service_client(&self) -> &#p::ServiceClient {
                &self.inner
            }

            #(#calls)*
        }
    }
}

/// Compile-time proof that every type crosses the wire, spanned at the user's type so that a
/// missing `Serialize` is reported there and not only at the attribute. For an impl block, also
/// that one value can serve concurrent calls from several threads.
fn wire_checks(service: &Service, cfgs: &[&Attribute]) -> TokenStream {
    let p = private(service);
    let types = service
        .methods
        .iter()
        .flat_map(|method| [&method.request, &method.response, &method.error]);
    let wire = types.map(|ty| quote_spanned!(ty.span()=> #p::assert_wire::<#ty>();));
    let shared = match &service.kind {
        Kind::Fn(_) => quote!(),
        Kind::Impl(item) => {
            let ty = &item.self_ty;
            // The name shows in the compiler's note when the bound fails.
            quote_spanned! {ty.span()=>
                const fn shared_by_concurrent_calls<
                    T: #p::core::marker::Send + #p::core::marker::Sync + 'static,
                >() {}
                shared_by_concurrent_calls::<#ty>();
            }
        }
    };
    quote! {
        #(#cfgs)*
        const _: () = {
            #(#wire)*
            #shared
        };
    }
}

fn add_method(method: &Method) -> Ident {
    if method.idempotent {
        Ident::new("idempotent_method", Span::call_site())
    } else {
        Ident::new("method", Span::call_site())
    }
}

fn private(service: &Service) -> TokenStream {
    let krate = &service.krate;
    quote!(#krate::__private)
}

/// `#[cfg]`s of the item apply to everything generated from it.
fn cfgs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect()
}

/// A name only the generated code can see: it can neither capture nor shadow the user's.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model, validate};

    /// What the attribute returns, without the `proc_macro` types that only exist inside the
    /// compiler.
    fn service(args: TokenStream, item: TokenStream) -> String {
        let parsed = parse::parse(args, item.clone());
        let service = parsed
            .map(model::Service::lower)
            .and_then(validate::validate);
        service
            .map_or_else(|e| fallback(&e, item), |s| expand(&s))
            .to_string()
    }

    #[test]
    fn output_is_valid_rust() {
        let function = service(
            quote!(name = "n", idempotent),
            quote!(
                async fn f(ctx: Context, r: u8) -> Result<u8, E> {
                    Ok(r)
                }
            ),
        );
        let methods = service(
            quote!(),
            quote!(impl S { #[idempotent] async fn m(&self, r: u8) -> Result<Self, E> { todo!() } }),
        );
        for code in [function, methods] {
            assert!(!code.contains("compile_error"), "{code}");
            assert!(!code.contains("# [idempotent]"), "{code}");
            syn::parse_str::<syn::File>(&code).expect("parses");
        }
    }

    #[test]
    fn failure_keeps_the_item_without_markers() {
        let code = service(
            quote!(bogus),
            quote!(impl S { #[idempotent] async fn m(&self, r: u8) -> Result<u8, E> { Ok(r) } }),
        );
        assert!(code.contains("compile_error"), "{code}");
        assert!(!code.contains("# [idempotent]"), "{code}");
        assert!(code.contains("async fn m"), "{code}");
        assert!(!code.contains("IntoService"), "{code}");
    }
}
