use skynet::ServiceError;

#[skynet::service]
async fn plain(n: u64) -> u64 {
    n
}

#[skynet::service]
async fn nothing(n: u64) {
    let _ = n;
}

#[skynet::service]
async fn alias(n: u64) -> std::io::Result<u64> {
    Ok(n)
}

fn main() {
    let _ = ServiceError::new("unused");
}
