use skynet::{Context, ServiceError};

#[skynet::service]
async fn ping() -> Result<u64, ServiceError> {
    Ok(1)
}

#[skynet::service]
async fn pong(ctx: Context) -> Result<u64, ServiceError> {
    Ok(ctx.request_id())
}

fn main() {}
