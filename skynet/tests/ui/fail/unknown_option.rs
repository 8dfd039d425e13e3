use skynet::ServiceError;

#[skynet::service(nmae = "ping")]
async fn ping(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

#[skynet::service(name = ping, version, idempotent = true, name = "pong")]
async fn pong(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

fn main() {}
