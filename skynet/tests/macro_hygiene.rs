//! `#[skynet::service]` output names everything by absolute path: it compiles without the
//! prelude, with the crate renamed, and next to user items that shadow common names.
#![no_implicit_prelude]

extern crate skynet as renamed;
extern crate std;

// Items with the names of what the generated code uses; a bare path in the expansion would
// pick these up and fail to compile.
#[allow(dead_code)]
mod shadowing {
    pub(crate) struct Result;
    pub(crate) struct Arc;
    pub(crate) struct Clone;
    pub(crate) struct Debug;
    pub(crate) struct Duration;
    pub(crate) struct SocketAddr;
    pub(crate) struct Context;
    pub(crate) struct ServiceDef;
    pub(crate) struct Node;
}
#[allow(unused_imports)]
use shadowing::*;

use ::std::string::String;

#[renamed::service(crate = "::renamed")]
async fn renamed_fn(req: u64) -> ::std::result::Result<u64, ::renamed::ServiceError> {
    ::std::result::Result::Ok(req)
}

#[::skynet::service(name = "plain_fn", idempotent)]
async fn plain(
    ctx: ::skynet::Context,
    req: String,
) -> ::std::result::Result<String, ::skynet::ServiceError> {
    let _ = ctx.request_id();
    ::std::result::Result::Ok(req)
}

struct RenamedImpl;

#[renamed::service(crate = "::renamed", version = "3.0.0")]
impl RenamedImpl {
    #[idempotent]
    async fn get(&self, id: u64) -> ::std::result::Result<u64, ::renamed::ServiceError> {
        ::std::result::Result::Ok(id)
    }

    async fn put(
        &self,
        ctx: ::renamed::Context,
        id: u64,
    ) -> ::std::result::Result<u64, ::renamed::ServiceError> {
        let _ = ctx.is_remote();
        ::std::result::Result::Ok(id)
    }
}

struct PlainImpl;

#[::skynet::service]
impl PlainImpl {
    async fn echo(&self, text: String) -> ::std::result::Result<String, String> {
        ::std::result::Result::Ok(text)
    }
}

/// Never run: the generated clients type-check under the same conditions.
#[allow(dead_code)]
async fn clients(node: &::skynet::Node) {
    let deadline = ::std::time::Duration::from_secs(1);
    let _ = renamed_fn::client(node)
        .with_deadline(deadline)
        .with_encoding(::skynet::Encoding::Json)
        .call(1)
        .await;
    let _ = plain::client(node)
        .at(node.local_addr())
        .call(String::new())
        .await;
    let _ = RenamedImpl::client(node).put(1).await;
    let _ = PlainImpl::client(node).service_client().service();
}

#[::std::prelude::v1::test]
fn expands_without_prelude() {
    let def = ::renamed::IntoService::into_service(renamed_fn).expect("valid");
    ::std::assert_eq!(def.name(), "renamed_fn");
    ::std::assert_eq!(
        def.is_idempotent("renamed_fn"),
        ::std::option::Option::Some(false)
    );

    let def = ::skynet::IntoService::into_service(plain).expect("valid");
    ::std::assert_eq!(def.name(), "plain_fn");
    ::std::assert_eq!(
        def.is_idempotent("plain"),
        ::std::option::Option::Some(true)
    );

    let def = ::skynet::IntoService::into_service(RenamedImpl).expect("valid");
    ::std::assert_eq!(def.name(), "renamed_impl");
    ::std::assert_eq!(::std::string::ToString::to_string(def.version()), "3.0.0");
    ::std::assert_eq!(def.is_idempotent("get"), ::std::option::Option::Some(true));
    ::std::assert_eq!(def.is_idempotent("put"), ::std::option::Option::Some(false));

    let def = ::skynet::IntoService::into_service(PlainImpl).expect("valid");
    ::std::assert_eq!(def.name(), "plain_impl");
    ::std::assert_eq!(
        def.is_idempotent("echo"),
        ::std::option::Option::Some(false)
    );
}
