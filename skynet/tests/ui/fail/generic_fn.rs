use skynet::ServiceError;

#[skynet::service]
async fn echo<T>(req: T) -> Result<T, ServiceError> {
    Ok(req)
}

fn main() {}
