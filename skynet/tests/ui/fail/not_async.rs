use skynet::ServiceError;

#[skynet::service]
fn ping(n: u64) -> Result<u64, ServiceError> {
    Ok(n)
}

fn main() {}
