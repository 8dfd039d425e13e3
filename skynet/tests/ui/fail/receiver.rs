use skynet::ServiceError;

pub struct Counter {
    n: u64,
}

#[skynet::service]
impl Counter {
    async fn take(self, n: u64) -> Result<u64, ServiceError> {
        Ok(self.n + n)
    }

    async fn add(&mut self, n: u64) -> Result<u64, ServiceError> {
        self.n += n;
        Ok(self.n)
    }
}

fn main() {}
