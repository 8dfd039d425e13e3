//! Runnable examples of skynet (see the `[[example]]` targets) and the sample Hello World
//! service they run, also shipped as the `hello-service` binary.

pub mod cluster;

/// Every program built on these examples (the cluster's processes, the hello service) uses
/// jemalloc, as the `skynet` binary does: freed memory goes back to the system within seconds
/// after a burst of large requests, where glibc's malloc keeps much of it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use serde::{Deserialize, Serialize};
use skynet::ServiceError;

/// What `hello` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Who to greet.
    pub name: String,
}

/// What `hello` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResponse {
    /// The greeting.
    pub greeting: String,
    /// Which process answered.
    pub served_by: u32,
}

/// Greets whoever asks. Idempotent: callers may retry it on another instance.
#[skynet::service(version = "1.0.0", idempotent)]
pub async fn hello(req: HelloRequest) -> Result<HelloResponse, ServiceError> {
    if req.name.trim().is_empty() {
        return Err(ServiceError::new("a name is required").with_code("invalid_argument"));
    }
    Ok(HelloResponse {
        greeting: format!("Hello {}", req.name),
        served_by: std::process::id(),
    })
}

/// Records every name it is given and answers how many it has seen. Not idempotent: a retry
/// would count a name twice, so callers never retry it once it may have run.
#[skynet::service(version = "1.0.0")]
pub async fn count(req: HelloRequest) -> Result<HelloResponse, ServiceError> {
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    Ok(HelloResponse {
        greeting: format!("{} is name number {n}", req.name),
        served_by: std::process::id(),
    })
}
