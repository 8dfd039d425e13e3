use skynet::{Context, ServiceError};

#[skynet::service]
async fn add(a: u64, b: u64, c: u64) -> Result<u64, ServiceError> {
    Ok(a + b + c)
}

#[skynet::service]
async fn context_last(n: u64, ctx: Context) -> Result<u64, ServiceError> {
    Ok(n + ctx.request_id())
}

fn main() {}
