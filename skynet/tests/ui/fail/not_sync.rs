use std::cell::Cell;

use skynet::ServiceError;

pub struct Counter {
    hits: Cell<u64>,
}

#[skynet::service]
impl Counter {
    async fn add(&self, n: u64) -> Result<u64, ServiceError> {
        self.hits.set(self.hits.get() + n);
        Ok(self.hits.get())
    }
}

fn main() {}
