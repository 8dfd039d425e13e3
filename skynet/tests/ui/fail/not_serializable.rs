use skynet::ServiceError;

pub struct Plain {
    pub n: u64,
}

#[skynet::service]
async fn ping(req: Plain) -> Result<u64, ServiceError> {
    Ok(req.n)
}

fn main() {}
