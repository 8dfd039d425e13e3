//! Impl-block services. Warnings are errors: the generated code must not cause any.
#![deny(warnings)]

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use skynet::{CallError, Context, IntoService, Node, ServiceError};

#[derive(Serialize, Deserialize)]
pub struct Item {
    id: u64,
}

pub struct Widgets {
    next: AtomicU64,
}

#[skynet::service(name = "widgets", version = "1.2.0")]
impl Widgets {
    /// Not a service method: no `&self`.
    pub fn new() -> Self {
        Self {
            next: AtomicU64::new(1),
        }
    }

    /// Not a service method: not async.
    fn bump(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Looks an item up.
    #[idempotent]
    async fn get(&self, id: u64) -> Result<Item, ServiceError> {
        Ok(Item { id })
    }

    async fn put(&self, ctx: skynet::Context, _item: Item) -> Result<u64, ServiceError> {
        let _ = ctx.request_id();
        Ok(self.bump())
    }

    async fn r#echo(&self, this: Self) -> Result<Self, ServiceError> {
        Ok(this)
    }
}

// Widgets can also cross the wire, for `echo`.
impl Serialize for Widgets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.next.load(Ordering::Relaxed).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Widgets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            next: AtomicU64::new(u64::deserialize(d)?),
        })
    }
}

struct HTTPServer;

#[skynet::service]
impl HTTPServer {
    async fn fetch(&self, _ctx: Context, url: String) -> Result<String, String> {
        Ok(url)
    }
}

#[allow(dead_code)]
async fn use_clients(node: &Node) {
    let client: WidgetsClient = Widgets::client(node);
    let _: Result<Item, CallError<ServiceError>> = client.get(1).await;
    let _: Result<u64, CallError<ServiceError>> = client.put(Item { id: 1 }).await;
    let _: Result<Widgets, CallError<ServiceError>> = client.echo(Widgets::new()).await;
    let _: Result<String, CallError<String>> = HTTPServer::client(node).fetch("/".into()).await;
}

fn main() {
    let def = Widgets::new().into_service().expect("valid");
    assert_eq!(def.name(), "widgets");
    assert_eq!(def.version().to_string(), "1.2.0");
    assert_eq!(def.is_idempotent("get"), Some(true));
    assert_eq!(def.is_idempotent("put"), Some(false));
    assert_eq!(def.is_idempotent("echo"), Some(false));
    assert_eq!(def.is_idempotent("new"), None);
    assert_eq!(def.is_idempotent("bump"), None);

    let def = HTTPServer.into_service().expect("valid");
    assert_eq!(def.name(), "http_server");
}
