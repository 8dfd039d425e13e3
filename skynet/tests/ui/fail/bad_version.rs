use skynet::ServiceError;

#[skynet::service(version = "1.0")]
async fn ping(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

#[skynet::service(version = "v1.0.0")]
async fn pong(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

fn main() {}
