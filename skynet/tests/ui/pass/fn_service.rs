//! Function services in every accepted form. Warnings are errors: the generated code must not
//! cause any in the user's crate, used or not.
#![deny(warnings)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use skynet::{CallError, Context, Encoding, IntoService, Node, ServiceClient, ServiceError};

#[derive(Serialize, Deserialize)]
pub struct Req {
    n: u32,
}

#[derive(Serialize, Deserialize)]
pub struct Resp {
    n: u32,
}

/// Doubles a number.
#[skynet::service]
async fn double(req: Req) -> Result<Resp, ServiceError> {
    Ok(Resp { n: req.n * 2 })
}

#[skynet::service(name = "tripler", version = "2.0.0-beta.1+build.5", idempotent)]
pub async fn triple(ctx: Context, Req { n }: Req) -> Result<Resp, ServiceError> {
    let _ = ctx.is_remote();
    Ok(Resp { n: n * 3 })
}

#[skynet::service(crate = "::skynet")]
#[idempotent]
pub(crate) async fn r#type(_ctx: skynet::Context, mut text: String) -> Result<usize, String> {
    text.push('!');
    Ok(text.len())
}

/// Never run: it proves the generated API has the types it should.
#[allow(dead_code)]
async fn use_clients(node: &Node, ctx: Context) {
    let client: DoubleClient = double::client(node)
        .at(node.local_addr())
        .with_deadline(Duration::from_secs(1))
        .with_encoding(Encoding::Json);
    let _: &ServiceClient = client.service_client();
    let _: Result<Resp, CallError<ServiceError>> = client.call(Req { n: 1 }).await;
    let _: Result<Resp, CallError<ServiceError>> = triple::client(node).call(Req { n: 1 }).await;
    let _: Result<usize, CallError<String>> = r#type::client(node).call("a".into()).await;
    let _: Result<Resp, ServiceError> = double::run(Req { n: 1 }).await;
    let _: Result<Resp, ServiceError> = triple::run(ctx, Req { n: 1 }).await;
}

fn main() {
    let def = double.into_service().expect("valid");
    assert_eq!(
        (def.name(), def.version().to_string()),
        ("double", "0.1.0".into())
    );
    assert_eq!(def.is_idempotent("double"), Some(false));

    let def = triple.into_service().expect("valid");
    assert_eq!(def.name(), "tripler");
    assert_eq!(def.version().to_string(), "2.0.0-beta.1+build.5");
    assert_eq!(def.is_idempotent("triple"), Some(true));

    let def = r#type.into_service().expect("valid");
    assert_eq!(def.name(), "type");
    assert_eq!(def.is_idempotent("type"), Some(true));
}
