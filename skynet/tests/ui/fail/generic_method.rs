use skynet::ServiceError;

pub struct Echo;

#[skynet::service]
impl Echo {
    async fn echo<T: Send>(&self, req: T) -> Result<T, ServiceError> {
        Ok(req)
    }

    async fn show(&self, req: impl ToString) -> Result<String, ServiceError> {
        Ok(req.to_string())
    }
}

fn main() {}
