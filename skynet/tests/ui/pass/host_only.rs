//! A binary that only hosts its services never touches their clients or `run`; the unused
//! generated items must not warn.
#![deny(warnings)]

use skynet::{IntoService, ServiceError};

#[skynet::service]
async fn ping(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

struct Counter;

#[skynet::service]
impl Counter {
    async fn add(&self, n: u64) -> Result<u64, ServiceError> {
        Ok(n + 1)
    }
}

fn main() {
    let defs = [ping.into_service(), Counter.into_service()];
    assert!(defs.iter().all(Result::is_ok));
}
